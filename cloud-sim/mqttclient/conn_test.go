package mqttclient

import (
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// streamConn is a net.Conn whose reads return everything written to it
// since the last read, blocking while there is nothing, as a socket does.
type streamConn struct {
	net.Conn
	mu    sync.Mutex
	buf   []byte
	ready chan struct{} // closed when buf has data
	reads int
}

func newStreamConn() *streamConn { return &streamConn{ready: make(chan struct{})} }

func (c *streamConn) send(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 {
		close(c.ready)
	}
	c.buf = append(c.buf, b...)
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	ready := c.ready
	c.mu.Unlock()
	<-ready
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	if len(c.buf) == 0 {
		c.ready = make(chan struct{})
	}
	return n, nil
}

// TestPacedConn: a stream of packets 100 µs apart is read in one read a
// millisecond with pacing and one a packet without; a packet after a
// quiet spell is read the moment it arrives; a read that filled its
// buffer is followed at once.
func TestPacedConn(t *testing.T) {
	tests := []struct {
		name      string
		every     time.Duration
		packets   int
		gap       time.Duration // between packets
		buf       int           // each read's buffer
		wantReads [2]int        // at least, at most
		wantLag   time.Duration // the most a packet waits to be read
	}{
		{"busy, unpaced", 0, 100, 100 * time.Microsecond, 4096, [2]int{100, 100}, 0},
		{"busy, paced", time.Millisecond, 100, 100 * time.Microsecond, 4096, [2]int{10, 12}, time.Millisecond},
		{"quiet, paced", time.Millisecond, 10, 5 * time.Millisecond, 64, [2]int{10, 10}, 0},
		{"buffer filled, paced", time.Millisecond, 1, 0, 2, [2]int{5, 5}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				raw := newStreamConn()
				c := &pacedConn{Conn: raw, every: tt.every}
				sent := make(chan time.Time, tt.packets)
				go func() {
					for range tt.packets {
						time.Sleep(tt.gap)
						sent <- time.Now()
						raw.send(make([]byte, 10))
					}
				}()
				var lag time.Duration
				p := make([]byte, tt.buf)
				for got := 0; got < tt.packets*10; {
					n, err := c.Read(p)
					if err != nil {
						t.Fatal(err)
					}
					// Each packet is 10 bytes: the ones this read completed.
					for range (got+n)/10 - got/10 {
						lag = max(lag, time.Since(<-sent))
					}
					got += n
				}
				if raw.reads < tt.wantReads[0] || raw.reads > tt.wantReads[1] {
					t.Errorf("%d reads; want %d to %d", raw.reads, tt.wantReads[0], tt.wantReads[1])
				}
				if lag > tt.wantLag {
					t.Errorf("a packet waited %v to be read; want at most %v", lag, tt.wantLag)
				}
			})
		})
	}
}
