package mqttclient

import (
	"crypto/tls"
	"net/url"
	"testing"
)

// TestDialer: TCP and TLS brokers are dialed through the read buffer;
// websockets and a proxy are left to autopaho (nil).
func TestDialer(t *testing.T) {
	tests := []struct {
		scheme, proxy string
		ours          bool
	}{
		{"mqtt", "", true},
		{"mqtts", "", true},
		{"SSL", "", true},
		{"tls", "", true},
		{"ws", "", false},
		{"wss", "", false},
		{"mqtt", "socks5://127.0.0.1:1080", false},
		{"mqtts", "socks5://127.0.0.1:1080", false},
	}
	for _, tt := range tests {
		t.Run(tt.scheme+" "+tt.proxy, func(t *testing.T) {
			t.Setenv("all_proxy", tt.proxy)
			if got := dialer(tt.scheme) != nil; got != tt.ours {
				t.Errorf("dialer(%q) with all_proxy=%q is ours: %v, want %v", tt.scheme, tt.proxy, got, tt.ours)
			}
		})
	}
}

// TestTLSFor: the server name is the URL's host unless the configuration
// names one, and the caller's configuration is not changed.
func TestTLSFor(t *testing.T) {
	u, _ := url.Parse("mqtts://broker.example.com:8883")
	named := &tls.Config{ServerName: "other.example.com"}
	unnamed := &tls.Config{MinVersion: tls.VersionTLS13}
	tests := []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"none", nil, "broker.example.com"},
		{"a name of its own", named, "other.example.com"},
		{"no name", unnamed, "broker.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tlsFor(tt.cfg, u).ServerName; got != tt.want {
				t.Errorf("ServerName %q, want %q", got, tt.want)
			}
		})
	}
	if unnamed.ServerName != "" || tlsFor(unnamed, u).MinVersion != tls.VersionTLS13 {
		t.Error("tlsFor changed the caller's configuration, or dropped its settings")
	}
}
