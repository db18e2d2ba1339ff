package egress

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

func TestCheck(t *testing.T) {
	allow, err := New("--registry-check-allow", []string{"10.20.0.0/16", "fd00::5", "127.0.0.1:5000", "registry.lan:5000"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		want bool // allowed
	}{
		{"93.184.216.34:443", true},
		{"[2606:4700::1111]:443", true},
		{"127.0.0.1:443", false},
		{"127.9.9.9:5000", false},
		{"[::1]:443", false},
		{"[::ffff:127.0.0.1]:443", false},
		{"10.0.0.1:443", false},
		{"172.16.5.5:443", false},
		{"192.168.1.1:443", false},
		{"[fd12::1]:443", false},
		{"169.254.169.254:80", false},
		{"[fe80::1]:443", false},
		{"0.0.0.0:443", false},
		{"[::]:443", false},
		{"224.0.0.1:443", false},
		{"[ff02::1]:443", false},
		{"100.100.100.100:443", false},
		{"255.255.255.255:443", false},
		{"[64:ff9b::7f00:1]:443", false},
		// The allow-list.
		{"10.20.3.4:443", true},
		{"[fd00::5]:443", true},
		{"127.0.0.1:5000", true},
		{"[::ffff:127.0.0.1]:5000", true},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := allow.Check(netip.MustParseAddrPort(tt.addr))
			if got := err == nil; got != tt.want {
				t.Errorf("Check(%s) = %v, want allowed %v", tt.addr, err, tt.want)
			}
			if err != nil && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "--registry-check-allow")) {
				t.Errorf("Check(%s) = %v, want ErrRefused naming the setting", tt.addr, err)
			}
		})
	}
}

func TestNewRefusesBadEntries(t *testing.T) {
	for _, e := range []string{"", "registry.lan", "10.0.0.0/33", "a b:5000", "http://x/:5"} {
		if _, err := New("--registry-check-allow", []string{e}); err == nil || !strings.Contains(err.Error(), "--registry-check-allow") {
			t.Errorf("New(%q) = %v, want an error naming the setting", e, err)
		}
	}
}

// TestDialContext: a dial to a loopback server is refused before anything
// is sent, whatever name it was dialled by; allow-listed it connects.
func TestDialContext(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	get := func(p *Policy, url string) error {
		c := &http.Client{Transport: &http.Transport{DialContext: p.DialContext}}
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	var zero *Policy
	for _, u := range []string{srv.URL, "http://localhost:" + port} {
		if err := get(zero, u); !errors.Is(err, ErrRefused) {
			t.Errorf("GET %s = %v, want refused", u, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback server got %d requests", n)
	}
	for _, entry := range []string{srv.Listener.Addr().String(), "localhost:" + port, "127.0.0.0/8"} {
		p, err := New("--registry-check-allow", []string{entry})
		if err != nil {
			t.Fatal(err)
		}
		if err := get(p, "http://localhost:"+port); err != nil {
			t.Errorf("allow %s: %v", entry, err)
		}
	}
}
