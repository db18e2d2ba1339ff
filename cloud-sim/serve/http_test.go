package serve

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestAPIToken: without a token serve makes one in the data directory
// (0600, 32 random bytes) and reuses it; a given token wins; no
// authentication only when asked, and only on loopback.
func TestAPIToken(t *testing.T) {
	loopback := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	dir := t.TempDir()
	tok, file, created, err := apiToken(Config{DataDir: dir}, loopback)
	if err != nil || !created || file != filepath.Join(dir, "api-token") || len(tok) != 43 {
		t.Fatalf("first start: token %d chars, file %q, created %v, err %v; want 43 chars in %s/api-token, created", len(tok), file, created, err, dir)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v, want 0600", st.Mode(), err)
	}
	again, _, created, err := apiToken(Config{DataDir: dir}, loopback)
	if err != nil || created || again != tok {
		t.Fatalf("second start: created %v, same token %v, err %v; want the same token, not created", created, again == tok, err)
	}
	other, _, _, _ := apiToken(Config{DataDir: t.TempDir()}, loopback)
	if other == tok {
		t.Fatal("two data directories got the same token")
	}

	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "api-token"), nil, 0o600)
	tests := []struct {
		name      string
		cfg       Config
		addr      net.Addr
		wantToken string
		wantErr   string
	}{
		{name: "given token", cfg: Config{DataDir: dir, APIToken: "given"}, addr: loopback, wantToken: "given"},
		{name: "insecure on loopback", cfg: Config{DataDir: dir, APIInsecureNoAuth: true}, addr: loopback},
		{name: "insecure on all interfaces", cfg: Config{DataDir: dir, APIInsecureNoAuth: true}, addr: &net.TCPAddr{IP: net.IPv4zero, Port: 8080}, wantErr: "--api-insecure-no-auth"},
		{name: "insecure with a token", cfg: Config{DataDir: dir, APIInsecureNoAuth: true, APIToken: "x"}, addr: loopback, wantErr: "--api-token-file"},
		{name: "empty token file", cfg: Config{DataDir: empty}, addr: loopback, wantErr: filepath.Join(empty, "api-token")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, _, _, err := apiToken(tt.cfg, tt.addr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || tok != tt.wantToken {
				t.Fatalf("got %q, %v; want %q", tok, err, tt.wantToken)
			}
		})
	}
}

// TestAllowedHosts: the Host names the API answers to.
func TestAllowedHosts(t *testing.T) {
	tests := []struct {
		name          string
		addr          *net.TCPAddr
		extra         []string
		want, refused []string
	}{
		{name: "loopback", addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080},
			want: []string{"127.0.0.1:8080", "localhost:8080", "[::1]:8080"}, refused: []string{"localhost:80"}},
		{name: "one address", addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 8080}, extra: []string{"fleet.example.com"},
			want: []string{"10.1.2.3:8080", "fleet.example.com"}, refused: []string{"localhost:8080"}},
		{name: "all interfaces", addr: &net.TCPAddr{IP: net.IPv4zero, Port: 9000},
			want: []string{"localhost:9000", "127.0.0.1:9000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := allowedHosts(tt.addr, tt.extra)
			for _, h := range tt.want {
				if !slices.Contains(got, h) {
					t.Errorf("%s missing from %v", h, got)
				}
			}
			for _, h := range tt.refused {
				if slices.Contains(got, h) {
					t.Errorf("%s in %v", h, got)
				}
			}
		})
	}
}
