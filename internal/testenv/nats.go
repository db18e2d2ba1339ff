package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// NATSServerBinary builds nats-server from the module in go.mod, once
// per test process, and returns its path.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	const pkg = "github.com/nats-io/nats-server/v2"
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	if binDir == "" {
		if binDir, err = os.MkdirTemp("", "fleet-bin-"); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(binDir, "nats-server")
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// NATSOptions configure NATSCluster.
type NATSOptions struct {
	// TLSCert and TLSKey are PEM files of the servers' certificate (for
	// 127.0.0.1): clients must then use TLS. With TLSCA, a CA's PEM file,
	// they must also show a certificate it signed.
	TLSCert, TLSKey, TLSCA string
}

// NATSCluster is a cluster of real nats-server processes on loopback with
// JetStream, routes between all of them and a login that clients must
// give (User, Password; CredsFile holds user:password).
type NATSCluster struct {
	User, Password string
	CredsFile      string
	nodes          []*natsNode
}

type natsNode struct {
	mu      sync.Mutex // guards cmd and done
	name    string
	bin     string
	conf    string
	client  string // host:port
	monitor string // host:port of /healthz
	logs    *LogBuffer
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartNATSCluster starts n nats-servers forming one JetStream cluster
// and waits until every one reports healthy (a JetStream meta leader
// known and current). All are killed in t.Cleanup; their logs are shown
// when the test failed.
func StartNATSCluster(t testing.TB, n int, opts NATSOptions) *NATSCluster {
	t.Helper()
	bin := NATSServerBinary(t)
	dir := t.TempDir()
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	c := &NATSCluster{User: "fleet", Password: hex.EncodeToString(secret), CredsFile: filepath.Join(dir, "login")}
	if err := os.WriteFile(c.CredsFile, []byte(c.User+":"+c.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	routes := make([]string, n)
	clusterAddrs := make([]string, n)
	for i := range n {
		clusterAddrs[i] = FreeAddr(t)
		routes[i] = "nats-route://" + clusterAddrs[i]
	}
	for i := range n {
		node := &natsNode{name: fmt.Sprintf("n%d", i+1), bin: bin, client: FreeAddr(t), monitor: FreeAddr(t), logs: &LogBuffer{}}
		node.conf = filepath.Join(dir, node.name+".conf")
		conf := natsConf(node, filepath.Join(dir, node.name), clusterAddrs[i], routes, c, opts)
		if err := os.WriteFile(node.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, node)
	}
	t.Cleanup(func() {
		for _, node := range c.nodes {
			node.kill()
			if t.Failed() {
				t.Logf("nats-server %s log:\n%s", node.name, node.logs.String())
			}
		}
	})
	for _, node := range c.nodes {
		node.start(t)
	}
	for i := range c.nodes {
		c.AwaitHealthy(t, i)
	}
	return c
}

func natsConf(node *natsNode, store, clusterAddr string, routes []string, c *NATSCluster, opts NATSOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\nlisten: %q\nhttp: %q\n", node.name, node.client, node.monitor)
	fmt.Fprintf(&b, "jetstream { store_dir: %q, max_memory_store: 64MB, max_file_store: 1GB }\n", store)
	if len(routes) > 1 { // one server runs alone: JetStream clustered needs peers
		fmt.Fprintf(&b, "cluster { name: fleet-test, listen: %q, routes: [%s] }\n", clusterAddr, strings.Join(quoted(routes), ", "))
	}
	fmt.Fprintf(&b, "authorization { user: %q, password: %q }\n", c.User, c.Password)
	if opts.TLSCert != "" {
		fmt.Fprintf(&b, "tls { cert_file: %q, key_file: %q", opts.TLSCert, opts.TLSKey)
		if opts.TLSCA != "" {
			fmt.Fprintf(&b, ", ca_file: %q, verify: true", opts.TLSCA)
		}
		b.WriteString(", timeout: 5 }\n")
	}
	return b.String()
}

func quoted(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// URLs are the servers' client URLs, comma-separated as --nats takes them.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// URL is server i's client URL.
func (c *NATSCluster) URL(i int) string { return "nats://" + c.nodes[i].client }

// Name is server i's server_name (n1, n2, …).
func (c *NATSCluster) Name(i int) string { return c.nodes[i].name }

// Kill sends server i SIGKILL and waits for it to end.
func (c *NATSCluster) Kill(i int) { c.nodes[i].kill() }

// PID is server i's process id.
func (c *NATSCluster) PID(i int) int {
	n := c.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd.Process.Pid
}

// Restart starts server i again (after Kill) with the same store and
// waits until it is healthy: back in the cluster and caught up.
func (c *NATSCluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.nodes[i].kill()
	c.nodes[i].start(t)
	c.AwaitHealthy(t, i)
}

// AwaitHealthy waits until server i's /healthz answers 200: JetStream
// is up, the cluster has a meta leader and this server is current.
func (c *NATSCluster) AwaitHealthy(t testing.TB, i int) {
	t.Helper()
	url := "http://" + c.nodes[i].monitor + "/healthz"
	client := &http.Client{Timeout: time.Second}
	Eventually(t, "nats-server "+c.nodes[i].name+" healthy at "+url, func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// ServerOf returns the index of the server that a client connected with
// name (nats.Name) is connected to, from each server's /connz; -1 when
// none is.
func (c *NATSCluster) ServerOf(t testing.TB, name string) int {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	for i, n := range c.nodes {
		resp, err := client.Get("http://" + n.monitor + "/connz?limit=1024")
		if err != nil {
			continue
		}
		var connz struct {
			Connections []struct {
				Name string `json:"name"`
			} `json:"connections"`
		}
		err = json.NewDecoder(resp.Body).Decode(&connz)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("nats-server %s /connz: %v", n.name, err)
		}
		for _, conn := range connz.Connections {
			if conn.Name == name {
				return i
			}
		}
	}
	return -1
}

// Logs are what server i has logged so far.
func (c *NATSCluster) Logs(i int) string { return c.nodes[i].logs.String() }

func (n *natsNode) start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cmd = exec.Command(n.bin, "-c", n.conf)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start nats-server %s: %v", n.name, err)
	}
	done := make(chan struct{})
	n.done = done
	go func(cmd *exec.Cmd) {
		_ = cmd.Wait()
		close(done)
	}(n.cmd)
	Eventually(t, "nats-server "+n.name+" accepts connections on "+n.client, func() bool {
		conn, err := net.DialTimeout("tcp", n.client, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

func (n *natsNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
}
