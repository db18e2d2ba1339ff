package fetch

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// faultProxy is a TCP proxy between the fetcher and the registry that counts
// the bytes the registry sends and injects faults into them.
type faultProxy struct {
	ln     net.Listener
	target string
	done   chan struct{}

	down atomic.Int64 // bytes registry → fetcher

	// cutEvery closes the connection that carries byte k*cutEvery (0: never).
	cutEvery int64
	// stallAt holds, once, the connection that carries that byte: it stays
	// open and silent (0: never).
	stallAt int64
	// stallRequest holds, once, the answer on the first connection whose
	// request contains it ("" never).
	stallRequest string
	stalled      atomic.Bool
	// onBytes sees the running total after each forwarded chunk.
	onBytes func(total int64)

	mu    sync.Mutex // guards conns
	wg    sync.WaitGroup
	conns []net.Conn
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, done: make(chan struct{})}
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

// start serves; set the faults before.
func (p *faultProxy) start() {
	p.wg.Go(func() {
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
}

func (p *faultProxy) close() {
	close(p.done)
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *faultProxy) track(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = append(p.conns, c)
}

func (p *faultProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	p.track(client)
	p.track(server)
	client.(*net.TCPConn).SetWriteBuffer(16 << 10)
	var matched atomic.Bool
	go func() {
		p.upstream(server, client, &matched)
		server.(*net.TCPConn).CloseWrite()
	}()
	p.forward(client, server, &matched)
}

// upstream copies fetcher → registry, marking the connection once a request
// contains stallRequest.
func (p *faultProxy) upstream(server, client net.Conn, matched *atomic.Bool) {
	buf := make([]byte, 16<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if p.stallRequest != "" && strings.Contains(string(buf[:n]), p.stallRequest) {
				matched.Store(true)
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forward copies registry → fetcher, cutting and stalling as configured.
func (p *faultProxy) forward(client, server net.Conn, matched *atomic.Bool) {
	buf := make([]byte, 16<<10)
	for {
		n, err := server.Read(buf)
		for n > 0 {
			chunk, cut := p.limit(int64(n))
			if _, werr := client.Write(buf[:chunk]); werr != nil {
				return
			}
			total := p.down.Add(chunk)
			if p.onBytes != nil {
				p.onBytes(total)
			}
			copy(buf, buf[chunk:n])
			n -= int(chunk)
			if cut {
				client.(*net.TCPConn).CloseWrite()
				return
			}
			stall := (p.stallAt > 0 && total >= p.stallAt) || matched.Load()
			if stall && p.stalled.CompareAndSwap(false, true) {
				<-p.done
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// limit is how much of n bytes may pass before the next cut, and whether the
// connection is cut after them.
func (p *faultProxy) limit(n int64) (int64, bool) {
	if p.cutEvery <= 0 {
		return n, false
	}
	sent := p.down.Load()
	next := (sent/p.cutEvery + 1) * p.cutEvery
	if sent+n >= next {
		return next - sent, true
	}
	return n, false
}
