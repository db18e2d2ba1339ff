package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
)

func startLimited(t *testing.T, l Limits) *Broker {
	t.Helper()
	b, err := Start(Config{Limits: l})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// connect dials b with a paho client; the CONNACK is returned with the
// error of a refused connection.
func connect(t *testing.T, addr, id string) (*paho.Client, *paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err == nil {
		t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	} else {
		conn.Close()
	}
	return c, ca, err
}

// closedByPeer polls conn until the broker has closed it.
func closedByPeer(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	testenv.Eventually(t, what, func() bool { return closed(conn, 100*time.Millisecond) })
}

// closed reports whether reading conn for up to wait ends in anything but
// a timeout: the peer closed or reset it.
func closed(conn net.Conn, wait time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(wait))
	_, err := io.ReadAll(conn)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestConnectionsBeforeCONNECT: a connection that sends nothing, sends a
// CONNECT too large, or sends something else first is closed before it
// can cost the broker more; a normal CONNECT still connects.
func TestConnectionsBeforeCONNECT(t *testing.T) {
	b := startLimited(t, Limits{ConnectTimeout: 200 * time.Millisecond, MaxConnectSize: 4096})
	tests := []struct {
		name string
		send []byte
	}{
		{"nothing", nil},
		// A CONNECT announcing 100 MiB, of which only the header is sent:
		// refused from its length, without waiting for the body.
		{"huge CONNECT", append([]byte{0x10, 0x80, 0x80, 0x80, 0x32}, bytes.Repeat([]byte{0}, 16)...)},
		{"PUBLISH first", []byte{0x30, 0x05, 0x00, 0x01, 'a', 'x', 'y'}},
		{"malformed length", []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", b.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			closedByPeer(t, conn, "the broker closes the connection")
		})
	}
	t.Run("a normal CONNECT", func(t *testing.T) {
		if _, _, err := connect(t, b.Addr(), "normal"); err != nil {
			t.Fatalf("connect: %v", err)
		}
	})
}

// TestMaxPending: with MaxPending connections waiting for their CONNECT,
// the next is closed at once (long before the CONNECT deadline), and a
// place frees up when one of them connects.
func TestMaxPending(t *testing.T) {
	b := startLimited(t, Limits{ConnectTimeout: time.Hour, MaxPending: 2})
	for range 2 {
		idle, err := net.Dial("tcp", b.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer idle.Close()
	}
	// The broker counts a connection once it accepts it: poll until the
	// third one is refused.
	testenv.Eventually(t, "a third waiting connection is closed", func() bool {
		conn, err := net.Dial("tcp", b.Addr())
		if err != nil {
			return false
		}
		defer conn.Close()
		return closed(conn, 200*time.Millisecond)
	})
}

// TestMaxClients: one client over MaxClients is refused with CONNACK
// "server busy"; a place frees up when one disconnects.
func TestMaxClients(t *testing.T) {
	b := startLimited(t, Limits{MaxClients: 2})
	first, _, err := connect(t, b.Addr(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := connect(t, b.Addr(), "c2"); err != nil {
		t.Fatal(err)
	}
	_, ca, err := connect(t, b.Addr(), "c3")
	if err == nil || ca == nil || ca.ReasonCode != 0x89 {
		t.Fatalf("third client: connack %+v, err %v; want refused with 0x89 (server busy)", ca, err)
	}
	first.Disconnect(&paho.Disconnect{})
	testenv.Eventually(t, "a client connects once another left", func() bool {
		_, _, err := connect(t, b.Addr(), "c4")
		return err == nil
	})
}

// TestMaxPacketSize: the broker advertises its maximum packet size and
// disconnects a client that publishes more; a publication within it
// passes.
func TestMaxPacketSize(t *testing.T) {
	b := startLimited(t, Limits{MaxPacketSize: 64 << 10})
	c, ca, err := connect(t, b.Addr(), "big")
	if err != nil {
		t.Fatal(err)
	}
	if got := ca.Properties.MaximumPacketSize; got == nil || *got != 64<<10 {
		t.Errorf("CONNACK maximum packet size = %v, want %d", got, 64<<10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "t", QoS: 1, Payload: make([]byte, 32<<10)}); err != nil {
		t.Fatalf("publish 32 KiB: %v", err)
	}
	// A raw client that ignores the advertised limit.
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gone := make(chan struct{})
	var once sync.Once
	raw := paho.NewClient(paho.ClientConfig{Conn: conn,
		OnServerDisconnect: func(*paho.Disconnect) { once.Do(func() { close(gone) }) },
		OnClientError:      func(error) { once.Do(func() { close(gone) }) },
	})
	if _, err := raw.Connect(ctx, &paho.Connect{ClientID: "raw", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	// PUBLISH QoS 0 announcing 1 MiB: the broker closes the connection
	// from the header.
	if _, err := conn.Write([]byte{0x30, 0x80, 0x80, 0x40}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
	case <-ctx.Done():
		t.Fatal("the broker did not disconnect a client that sent a packet over the limit")
	}
}
