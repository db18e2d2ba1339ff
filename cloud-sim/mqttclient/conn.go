package mqttclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
)

// readPacing is the least time between two reads of a connection to the
// broker while they keep finding data (pacedConn): at most this much is
// added to a packet's way in, and only in a busy stream.
const readPacing = 500 * time.Microsecond

// dialer connects to a broker over TCP (mqtt://) or TLS (mqtts://,
// ssl://, tls://) through a read buffer whose reads are paced
// (pacedConn): paho reads each packet's header a byte at a time, a system
// call each without a buffer, which weighed on a controller receiving tens
// of thousands of statuses a second. Websockets and a proxy (all_proxy)
// are left to autopaho's own dialer (nil).
func dialer(scheme string) func(context.Context, autopaho.ClientConfig, *url.URL) (net.Conn, error) {
	scheme = strings.ToLower(scheme)
	secure := slices.Contains([]string{"ssl", "tls", "mqtts", "mqtt+ssl", "tcps"}, scheme)
	if !secure && scheme != "mqtt" || os.Getenv("all_proxy") != "" {
		return nil
	}
	return func(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
		// autopaho bounds its own dials by ConnectTimeout, not this one's.
		timeout := cfg.ConnectTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		var conn net.Conn = &pacedConn{Conn: raw, every: readPacing}
		if secure {
			tc := tls.Client(conn, tlsFor(cfg.TlsCfg, u))
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			conn = tc
		}
		// Writes come from many goroutines: serialise them, as autopaho's
		// own dialer does.
		return packets.NewThreadSafeConn(readBuffered{Conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}), nil
	}
}

// tlsFor is cfg (a default one when nil) with the server name u's host
// when it names none, as tls.Dial does.
func tlsFor(cfg *tls.Config, u *url.URL) *tls.Config {
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName != "" {
		return cfg
	}
	c := cfg.Clone()
	c.ServerName = u.Hostname()
	return c
}

type readBuffered struct {
	net.Conn
	r *bufio.Reader
}

func (c readBuffered) Read(p []byte) (int, error) { return c.r.Read(p) }

// pacedConn reads at most once every `every` while there is data to read:
// a read that comes sooner after the last one waits out the rest of the
// interval first, so that what the broker sends meanwhile is taken in
// one system call (and one wake-up of the reading goroutine) instead of
// one per packet. A publication that arrives after a quiet interval is
// read at once; one in a busy stream waits at most `every`. A read that
// filled the buffer is followed at once, since more is waiting.
//
// Under a steady stream of statuses, each read took one or two packets
// and the reads, the poller's wake-ups and the goroutine handoffs cost
// more than handling the packets (BenchmarkIngestCost, docs/benchmarks.md).
type pacedConn struct {
	net.Conn
	every time.Duration
	last  time.Time // when the last read returned; zero before the first
	full  bool      // whether that read filled its buffer
}

func (c *pacedConn) Read(p []byte) (int, error) {
	if !c.full && !c.last.IsZero() {
		if wait := c.every - time.Since(c.last); wait > 0 {
			time.Sleep(wait)
		}
	}
	n, err := c.Conn.Read(p)
	c.last, c.full = time.Now(), n == len(p)
	return n, err
}
