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

// dialer connects to a broker over TCP (mqtt://) or TLS (mqtts://,
// ssl://, tls://) through a read buffer: paho reads each packet's header
// a byte at a time, a system call each on TCP without a buffer (which
// weighed on a controller receiving tens of thousands of statuses a
// second), and a pass through the TLS connection's record layer, under
// its lock, each over TLS. Websockets and a proxy (all_proxy) are left
// to autopaho's own dialer (nil).
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
		conn := raw
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
