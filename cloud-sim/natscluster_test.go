package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestServeOnNATSCluster: cloud-sim serve with --nats url1,url2,url3 and
// --nats-creds comes up on a 3-node cluster with 3 replicas, and keeps
// serving writes and reads when the NATS server it is connected to is
// SIGKILLed, and after that server's restart.
func TestServeOnNATSCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server and cloud-sim processes")
	}
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})
	api, summary, exited := startServe(t, "--nats", c.URLs(), "--nats-creds", c.CredsFile)
	if !strings.Contains(summary, "(3 replicas)") {
		t.Errorf("summary:\n%s\nwant NATS with 3 replicas", summary)
	}

	client := &http.Client{Timeout: time.Minute}
	call := func(method, path string, want int) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d", method, path, resp.StatusCode, want)
		}
		t.Logf("%s %s: %d in %v", method, path, resp.StatusCode, time.Since(start).Round(time.Millisecond))
	}
	call("POST", "/v1/gateways/acme/gw1/provision", http.StatusCreated)

	i := c.ServerOf(t, "cloud-sim")
	if i < 0 {
		t.Fatal("cloud-sim is connected to none of the NATS servers")
	}
	c.Kill(i)
	t.Logf("killed %s, the server cloud-sim was connected to", c.Name(i))
	call("POST", "/v1/gateways/acme/gw2/provision", http.StatusCreated)
	call("GET", "/v1/gateways/acme/gw1/identity", http.StatusOK)
	call("GET", "/v1/gateways/acme/gw2/identity", http.StatusOK)
	select {
	case <-exited:
		t.Fatal("cloud-sim exited after the NATS node was killed")
	default:
	}
	if now := c.ServerOf(t, "cloud-sim"); now < 0 || now == i {
		t.Errorf("cloud-sim is connected to server %d; want another than the killed %d", now, i)
	}

	c.Restart(t, i)
	call("POST", "/v1/gateways/acme/gw3/provision", http.StatusCreated)
	call("GET", "/v1/gateways/acme/gw3/identity", http.StatusOK)
}

// TestServeOnNATSClusterTLS: serve reaches a cluster that requires TLS
// and client certificates with --nats-ca, --nats-cert and --nats-key;
// with another CA it does not start and names --nats-ca.
func TestServeOnNATSClusterTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server and cloud-sim processes")
	}
	dir := t.TempDir()
	write := func(name string, content []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca, err := registry.NewCA("test NATS CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := registry.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(server.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := ca.IssueClient("cloud-sim")
	if err != nil {
		t.Fatal(err)
	}
	caFile := write("ca.pem", []byte(ca.PEM()))
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{
		TLSCert: write("server.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate[0]})),
		TLSKey:  write("server.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})),
		TLSCA:   caFile,
	})
	args := []string{"--nats", strings.ReplaceAll(c.URLs(), "nats://", "tls://"), "--nats-creds", c.CredsFile,
		"--nats-cert", write("client.pem", []byte(clientCert)), "--nats-key", write("client.key", []byte(clientKey))}

	api, summary, _ := startServe(t, append(args, "--nats-ca", caFile)...)
	if !strings.Contains(summary, "(3 replicas)") {
		t.Errorf("summary:\n%s\nwant NATS with 3 replicas", summary)
	}
	resp, err := http.Post(api+"/v1/gateways/acme/gw1/provision", "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("provision over TLS: %v %v", resp, err)
	}
	resp.Body.Close()

	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Binary(t, "cloud-sim"), append([]string{"serve", "--data", t.TempDir(), "--mqtt-listen", "127.0.0.1:0",
		"--http-listen", "127.0.0.1:0", "--api-insecure-no-auth", "--nats-ca", write("other.pem", []byte(other.PEM()))}, args...)...)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--nats-ca") {
		t.Errorf("serve with another CA: %v\n%s\nwant a failure naming --nats-ca", err, out)
	}
	t.Logf("serve with another CA: %v: %s", err, strings.TrimSpace(string(out)))
}

// startServe runs cloud-sim serve with args on loopback ports without an
// API token until the test ends, and returns its API URL, the startup
// summary up to that line, and a channel closed when it exits.
func startServe(t *testing.T, args ...string) (api, summary string, exited <-chan struct{}) {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t, "cloud-sim"), append([]string{"serve", "--data", t.TempDir(),
		"--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--api-insecure-no-auth"}, args...)...)
	logs := &testenv.LogBuffer{}
	cmd.Stderr = logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(testenv.Timeout):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("cloud-sim log:\n%s", logs.String())
		}
	})
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var b strings.Builder
	deadline := time.After(testenv.Timeout)
	for api == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("cloud-sim serve ended before printing its API address:\n%s", b.String())
			}
			b.WriteString(line + "\n")
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "HTTP API"); ok {
				api = strings.TrimSpace(rest)
			}
		case <-deadline:
			t.Fatalf("cloud-sim serve printed no API address within %v:\n%s", testenv.Timeout, b.String())
		}
	}
	go func() { // drain the rest
		for range lines {
		}
	}()
	return api, b.String(), done
}
