package broker

import (
	"net"
	"sync"
	"time"
)

// DefaultMaxQueuedBytes bounds what one connection's write queue holds
// (see queuedConn): 8,192 QoS 1 messages in flight, mochi's limit per
// client, of 2 KiB each.
const DefaultMaxQueuedBytes = 16 << 20

// ControllerMaxQueuedBytes bounds the write queue of a controller's
// session: the controller reads every gateway's statuses at QoS 0 (the
// broker retains the latest), which mochi drops, like any message, when
// a queue stays full; a fleet's burst (a rollout's 100,000 statuses are
// about 20 MiB) must reach it whole while it catches up.
const ControllerMaxQueuedBytes = 512 << 20

// DefaultMaxPendingWrites is the length of mochi's outbound channel per
// client (see Config.MaxPendingWrites): 1 KiB a client, allocated when it
// connects. The channel only hands packets to the client's write loop,
// whose writes go to the connection's queue and do not wait for the
// network.
const DefaultMaxPendingWrites = 512

// chunkBytes is the size of the blocks a queue grows by (the first of a
// burst is the size of its packet): a Write never
// copies what is queued already (a slice grown by append would, and
// stalled mochi's write loop for milliseconds once it held megabytes).
const chunkBytes = 16 << 10

// closeFlushTimeout bounds how long Close lets the queue drain (a refused
// CONNACK, a DISCONNECT) before it closes the connection.
const closeFlushTimeout = time.Second

// queuedConn is a client connection whose Write does not wait for the
// network: it appends to a queue that grows on demand, and a goroutine,
// started when the queue stops being empty and ended when it is empty
// again, writes the queue to the network. An idle connection holds no
// buffer and no goroutine.
//
// mochi writes to a client from one loop fed by a channel it allocates in
// full for every client, and drops what does not fit, QoS 1 messages
// included. With this queue behind it, that loop never waits for a slow
// subscriber, so the channel can be short; the queue holds what the
// subscriber has not read yet, bounded by mochi's in-flight limit (8,192
// QoS 1 messages a client) and by max bytes: a Write that would pass max
// waits until the queue drains (what a full socket did before).
type queuedConn struct {
	net.Conn
	max int

	mu      sync.Mutex
	drained sync.Cond     // with mu: the writer took the queue, or failed
	chunks  net.Buffers   // guarded by mu: bytes no writer has taken yet, in blocks of chunkBytes capacity
	queued  int           // guarded by mu: bytes in chunks
	spare   []byte        // guarded by mu: a written block to reuse within a burst
	done    chan struct{} // guarded by mu: closed when the running writer ends; nil when none runs
	err     error         // guarded by mu: the first write error
	closed  bool          // guarded by mu: Close was called
}

func newQueuedConn(conn net.Conn, max int) *queuedConn {
	c := &queuedConn{Conn: conn, max: max}
	c.drained.L = &c.mu
	return c
}

// raise lets the queue hold up to max bytes, if that is more.
func (c *queuedConn) raise(max int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if max > c.max {
		c.max = max
		c.drained.Broadcast()
	}
}

// Write queues p and returns at once, unless the queue already holds max
// bytes: then it waits for the writer to take them.
func (c *queuedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closed && c.queued > 0 && c.queued+len(p) > c.max {
		c.drained.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closed {
		return 0, net.ErrClosed
	}
	c.queued += len(p)
	for rest := p; len(rest) > 0; {
		if len(c.chunks) == 0 || len(c.chunks[len(c.chunks)-1]) == cap(c.chunks[len(c.chunks)-1]) {
			next := c.spare
			if next == nil {
				// A burst's first block fits the packet: most are a
				// lone CONNACK, PUBACK or command.
				next = make([]byte, 0, chunkBytes)
				if len(c.chunks) == 0 {
					next = make([]byte, 0, min(chunkBytes, max(len(rest), 256)))
				}
			}
			c.spare = nil
			c.chunks = append(c.chunks, next)
		}
		last := &c.chunks[len(c.chunks)-1]
		n := min(len(rest), cap(*last)-len(*last))
		*last = append(*last, rest[:n]...)
		rest = rest[n:]
	}
	if c.done == nil {
		c.done = make(chan struct{})
		go c.write(c.done)
	}
	return len(p), nil
}

// write writes the queue to the network until it is empty, then ends.
func (c *queuedConn) write(done chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(done)
	for len(c.chunks) > 0 && c.err == nil {
		batch := c.chunks
		c.chunks, c.queued = nil, 0
		c.drained.Broadcast()
		c.mu.Unlock()
		last := batch[len(batch)-1]
		_, err := batch.WriteTo(c.Conn) // consumes batch
		c.mu.Lock()
		if err != nil && c.err == nil {
			c.err = err
			c.chunks, c.queued = nil, 0
			c.drained.Broadcast()
		}
		if cap(last) == chunkBytes {
			c.spare = last[:0]
		}
	}
	c.spare = nil // drained: an idle connection holds no buffer
	c.done = nil
}

// Close lets the writer send what is queued (at most closeFlushTimeout)
// and closes the connection.
func (c *queuedConn) Close() error {
	c.mu.Lock()
	done := c.done
	c.closed = true
	c.drained.Broadcast()
	c.mu.Unlock()
	if done != nil {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		select {
		case <-done:
		case <-time.After(closeFlushTimeout): // the deadline was moved since
		}
	}
	return c.Conn.Close()
}
