package faultproxy_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/internal/faultproxy"
)

// payloadServer answers every connection with payload, then closes it.
func payloadServer(t *testing.T, payload []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write(payload)
			}()
		}
	}()
	return ln.Addr().String()
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// fetch connects through p and reads until the connection ends.
func fetch(t *testing.T, p *faultproxy.Proxy) []byte {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read through the proxy: %v", err)
	}
	return got
}

func TestCut(t *testing.T) {
	tests := []struct {
		name     string
		payload  int
		cut      faultproxy.Cut
		want     []int // bytes each of 3 successive connections receives
		wantCuts int64
	}{
		{"none", 8000, faultproxy.Cut{}, []int{8000, 8000, 8000}, 0},
		{"across connections", 8000, faultproxy.Cut{Every: 10000, Max: 1}, []int{8000, 2000, 8000}, 1},
		{"across connections, twice", 25000, faultproxy.Cut{Every: 10000, Max: 2}, []int{10000, 10000, 25000}, 2},
		{"per connection, never reached", 8000, faultproxy.Cut{Every: 10000, PerConn: true}, []int{8000, 8000, 8000}, 0},
		{"per connection", 25000, faultproxy.Cut{Every: 10000, PerConn: true, Max: 2}, []int{10000, 10000, 25000}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := random(tt.payload)
			p := newProxy(t, payloadServer(t, payload))
			p.SetCut(tt.cut)
			var total int64
			for i, want := range tt.want {
				got := fetch(t, p)
				if len(got) != want || !bytes.Equal(got, payload[:len(got)]) {
					t.Errorf("connection %d: got %d bytes (a prefix of the payload: %v), want %d", i, len(got), bytes.Equal(got, payload[:min(len(got), len(payload))]), want)
				}
				total += int64(len(got))
			}
			if p.BytesDown() != total {
				t.Errorf("BytesDown = %d, want %d", p.BytesDown(), total)
			}
			if p.Cuts() != tt.wantCuts {
				t.Errorf("Cuts = %d, want %d", p.Cuts(), tt.wantCuts)
			}
		})
	}
}

func TestThrottle(t *testing.T) {
	const rate, size = 100_000, 60_000
	p := newProxy(t, payloadServer(t, random(size)))
	p.Throttle(rate)
	start := time.Now()
	if got := fetch(t, p); len(got) != size {
		t.Fatalf("got %d bytes, want %d", len(got), size)
	}
	took := time.Since(start)
	want := time.Duration(size * float64(time.Second) / rate)
	if took < want*95/100 || took > want*2 {
		t.Errorf("%d bytes at %d B/s took %v, want about %v", size, rate, took, want)
	}

	p.Throttle(0)
	start = time.Now()
	fetch(t, p)
	if took := time.Since(start); took > want/2 {
		t.Errorf("unthrottled: took %v, want well under %v", took, want)
	}
}

func TestStallAtAndResume(t *testing.T) {
	const size, at = 50_000, 20_000
	payload := random(size)
	p := newProxy(t, payloadServer(t, payload))
	var seen atomic.Int64
	p.Observe(func(total int64) { seen.Store(total) })
	p.StallAt(at)

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, at)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !p.Stalled() {
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not stall")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p.BytesDown() != at || seen.Load() != at {
		t.Errorf("stalled with BytesDown %d, observed %d; want %d", p.BytesDown(), seen.Load(), at)
	}
	// Nothing more while stalled.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while stalled: %d bytes, %v; want nothing until the deadline", n, err)
	}

	p.Resume()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(got, rest...); !bytes.Equal(got, payload) {
		t.Errorf("after Resume: %d bytes in all, want the %d of the payload", len(got), size)
	}
	if p.BytesDown() != size || p.Stalled() {
		t.Errorf("BytesDown %d, stalled %v; want %d, false", p.BytesDown(), p.Stalled(), size)
	}
}

func TestCloseEndsStalledConnections(t *testing.T) {
	p, err := faultproxy.New(payloadServer(t, random(10_000)))
	if err != nil {
		t.Fatal(err)
	}
	p.Stall()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs on a stalled connection")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("got %d bytes from a stalled proxy", len(b))
	}
}
