// Package faultproxy injects the faults of an edge link between a client and
// a server, for tests: Proxy is a TCP proxy on loopback that cuts
// connections every N bytes, throttles, stalls and counts the bytes it
// forwards to the client; Blobs is an HTTP reverse proxy in front of a
// container registry that flips a byte of a blob or ignores Range requests.
// Put a Blobs server behind a Proxy to have both. Every knob can be turned
// while traffic flows.
package faultproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Cut says when the proxy closes a connection in the middle of what the
// server sends.
type Cut struct {
	// Every closes the connection that carries the byte k×Every of all the
	// bytes forwarded to clients, counted across connections (k = 1, 2, …,
	// from the moment the cut is set); 0 never.
	Every int64
	// PerConn counts Every on each connection instead: no connection carries
	// more than Every bytes to the client.
	PerConn bool
	// Max stops cutting after this many cuts; 0 is no limit.
	Max int
}

// Proxy forwards TCP connections to a target, injecting faults into what
// the target sends back.
type Proxy struct {
	ln     net.Listener
	target string
	done   chan struct{}
	wg     sync.WaitGroup

	down atomic.Int64 // bytes forwarded server → client
	up   atomic.Int64 // bytes forwarded client → server
	cuts atomic.Int64

	mu       sync.Mutex // guards the fields below
	cut      Cut
	nextCut  int64         // across connections: the total at which the next cut falls
	rate     int64         // bytes/s to clients, all connections together; 0 unlimited
	rateAt   time.Time     // start of the rate's accounting
	rateSent int64         // bytes accounted since rateAt
	stallAt  int64         // stall once down reaches it; 0 none
	resume   chan struct{} // non-nil while stalled; closed by Resume
	observe  func(total int64)
	conns    map[net.Conn]struct{}
}

// New listens on 127.0.0.1:0 and forwards every connection to target
// (host:port) until Close.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{ln: ln, target: target, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops listening, closes every connection and waits for them.
func (p *Proxy) Close() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	close(p.done)
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// BytesDown is how many bytes the proxy has forwarded to clients.
func (p *Proxy) BytesDown() int64 { return p.down.Load() }

// BytesUp is how many bytes the proxy has forwarded to the target.
func (p *Proxy) BytesUp() int64 { return p.up.Load() }

// Cuts is how many connections the proxy has cut.
func (p *Proxy) Cuts() int64 { return p.cuts.Load() }

// SetCut replaces the cutting rule (the zero Cut stops cutting).
func (p *Proxy) SetCut(c Cut) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = c
	p.cuts.Store(0)
	if c.Every > 0 {
		p.nextCut = p.down.Load() + c.Every
	}
}

// Throttle caps what all connections together forward to clients at
// bytesPerSec; 0 lifts the cap. An idle link earns no burst.
func (p *Proxy) Throttle(bytesPerSec int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate, p.rateAt, p.rateSent = bytesPerSec, time.Now(), 0
}

// Stall stops forwarding to clients until Resume; connections stay open
// and silent.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume == nil {
		p.resume = make(chan struct{})
	}
}

// StallAt stalls once exactly total bytes have been forwarded to clients
// (counted as BytesDown); 0 cancels it.
func (p *Proxy) StallAt(total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stallAt = total
}

// Stalled reports whether forwarding is stopped.
func (p *Proxy) Stalled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resume != nil
}

// Resume forwards again after Stall or StallAt.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume != nil {
		close(p.resume)
		p.resume = nil
	}
	p.stallAt = 0
}

// Observe calls fn with the running BytesDown after every write to a
// client (nil stops). fn runs on the forwarding goroutine: keep it short.
func (p *Proxy) Observe(fn func(total int64)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observe = fn
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// track adds c to the connections Close closes; false once closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *Proxy) serve(client net.Conn) {
	defer p.untrack(client)
	if !p.track(client) {
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer p.untrack(server)
	if !p.track(server) {
		return
	}
	// A small send buffer keeps the bytes counted close to the bytes the
	// client has read.
	if tc, ok := client.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	p.wg.Go(func() {
		p.upstream(client, server)
		if tc, ok := server.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	})
	p.forward(client, server)
}

// upstream copies client → server as it comes.
func (p *Proxy) upstream(client, server net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
			p.up.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}

// forward copies server → client under the rules, until either side ends
// or the rules cut the connection.
func (p *Proxy) forward(client, server net.Conn) {
	buf := make([]byte, 32<<10)
	var sent int64 // on this connection
	for {
		n, err := server.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			g := p.take(int64(len(data)), sent)
			if g.stalled != nil {
				select {
				case <-g.stalled:
					continue
				case <-p.done:
					return
				}
			}
			if !p.wait(g.delay) {
				return
			}
			w, werr := client.Write(data[:g.n])
			if unwritten := g.n - int64(w); unwritten > 0 {
				p.down.Add(-unwritten)
			}
			sent += int64(w)
			data = data[w:]
			if obs := p.observer(); obs != nil {
				obs(p.down.Load())
			}
			if werr != nil || g.cut {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// grant is what take allows a connection to write next.
type grant struct {
	n       int64         // bytes, already counted in down
	cut     bool          // close the connection after them
	delay   time.Duration // wait this long before writing them (throttle)
	stalled chan struct{} // if set, write nothing: wait for it to close
}

// take decides, under the lock, how many of the n bytes a connection that
// has sent connSent bytes may forward now, and counts them.
func (p *Proxy) take(n, connSent int64) grant {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume != nil {
		return grant{stalled: p.resume}
	}
	down := p.down.Load()
	if p.stallAt > 0 && down >= p.stallAt {
		p.stallAt = 0
		p.resume = make(chan struct{})
		return grant{stalled: p.resume}
	}
	g := grant{n: n}
	if p.rate > 0 {
		g.n = min(g.n, max(p.rate/50, 512))
	}
	if p.stallAt > 0 {
		g.n = min(g.n, p.stallAt-down)
	}
	if c := p.cut; c.Every > 0 && (c.Max == 0 || p.cuts.Load() < int64(c.Max)) {
		rem := p.nextCut - down
		if c.PerConn {
			rem = c.Every - connSent
		}
		if rem <= g.n {
			g.n, g.cut = max(rem, 0), true
			p.cuts.Add(1)
			if !c.PerConn {
				p.nextCut += c.Every
			}
		}
	}
	p.down.Add(g.n)
	if p.rate > 0 {
		now := time.Now()
		if idleUntil := p.rateAt.Add(bytesTime(p.rateSent, p.rate)); idleUntil.Before(now) {
			p.rateAt, p.rateSent = now, 0
		}
		p.rateSent += g.n
		g.delay = time.Until(p.rateAt.Add(bytesTime(p.rateSent, p.rate)))
	}
	return g
}

// bytesTime is how long n bytes take at rate bytes/s.
func bytesTime(n, rate int64) time.Duration {
	return time.Duration(float64(n) / float64(rate) * float64(time.Second))
}

// wait waits d (the throttle); false if the proxy closed meanwhile.
func (p *Proxy) wait(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.done:
		return false
	}
}

func (p *Proxy) observer() func(int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.observe
}
