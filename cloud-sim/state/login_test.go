package state_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// TestEmbeddedLogin: the embedded server refuses a client without its
// login, or with another password; the login is made on first start in a
// file only its owner reads, and the same one is used after a restart.
func TestEmbeddedLogin(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(context.Background(), state.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	creds := st.Creds()
	if creds != filepath.Join(dir, "login") {
		t.Errorf("login file %s, want %s", creds, filepath.Join(dir, "login"))
	}
	fi, err := os.Stat(creds)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("login file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	first, _ := os.ReadFile(creds)
	user, password, _ := strings.Cut(strings.TrimSpace(string(first)), ":")
	if user != state.EmbeddedUser || len(password) < 40 {
		t.Fatalf("login %q with a %d-character password; want %s and a 256-bit one", user, len(password), state.EmbeddedUser)
	}
	if !strings.HasPrefix(st.URL(), "nats://127.0.0.1:") {
		t.Errorf("embedded NATS at %s, want loopback", st.URL())
	}
	tests := []struct {
		name string
		opts []nats.Option
		ok   bool
	}{
		{"no login", nil, false},
		{"another password", []nats.Option{nats.UserInfo(user, "guess")}, false},
		{"another user", []nats.Option{nats.UserInfo("admin", password)}, false},
		{"the login", []nats.Option{nats.UserInfo(user, password)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(st.URL(), tt.opts...)
			if nc != nil {
				nc.Close()
			}
			if tt.ok != (err == nil) {
				t.Errorf("connect: %v; want ok %v", err, tt.ok)
			}
		})
	}
	st.Close()

	st, err = state.Open(context.Background(), state.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if again, _ := os.ReadFile(creds); string(again) != string(first) {
		t.Error("the login changed on restart")
	}
	// A second replica logs in with the file.
	other, err := state.Open(context.Background(), state.Config{URL: st.URL(), Creds: creds})
	if err != nil {
		t.Fatalf("a replica with the login file: %v", err)
	}
	other.Close()
	if _, err := state.Open(context.Background(), state.Config{URL: st.URL()}); err == nil || !strings.Contains(err.Error(), "--nats-creds") {
		t.Errorf("a replica without the login: %v; want a refusal naming --nats-creds", err)
	}
}

// TestExternalTLSAndLogin: an external NATS requiring TLS from a private
// CA, client certificates and a login is reached with --nats-ca,
// --nats-cert, --nats-key and --nats-creds, and refused, naming the
// setting, without each.
func TestExternalTLSAndLogin(t *testing.T) {
	ca, err := registry.NewCA("test NATS CA")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, keyPEM, err := ca.IssueClient("cloud-sim")
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile := write("ca.pem", ca.PEM()), write("client.pem", certPEM), write("client.key", keyPEM)
	creds, wrong := write("login", "fleet:s3cr3t-password\n"), write("wrong", "fleet:guess\n")
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		Username: "fleet", Password: "s3cr3t-password", NoSigs: true, NoLog: true, TLS: true, TLSVerify: true, TLSTimeout: 5,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := "tls://" + ns.Addr().String()
	tests := []struct {
		name    string
		cfg     state.Config
		wantErr string // "" for success
	}{
		{"TLS and login", state.Config{URL: url, Creds: creds, CA: caFile, Cert: certFile, Key: keyFile}, ""},
		{"no login", state.Config{URL: url, CA: caFile, Cert: certFile, Key: keyFile}, "--nats-creds"},
		{"wrong password", state.Config{URL: url, Creds: wrong, CA: caFile, Cert: certFile, Key: keyFile}, "--nats-creds"},
		{"no CA", state.Config{URL: url, Creds: creds, Cert: certFile, Key: keyFile}, "--nats-ca"},
		{"no client certificate", state.Config{URL: url, Creds: creds, CA: caFile}, "--nats-cert and --nats-key"},
		{"certificate without key", state.Config{URL: url, Creds: creds, CA: caFile, Cert: certFile}, "--nats-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := state.Open(ctx, tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if err := st.Put(ctx, state.Meta, "k", "v"); err != nil {
					t.Fatalf("put over TLS: %v", err)
				}
				return
			}
			if err == nil {
				st.Close()
				t.Fatalf("connected; want a refusal naming %s", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v; want one naming %s", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}
