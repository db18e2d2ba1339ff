package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NATSServerBinary builds nats-server from the module in go.mod, once
// per test process (or takes the prebuilt one: PrebuiltEnv), and returns
// its path.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	return buildOnce(t, "nats-server", "github.com/nats-io/nats-server/v2")
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
	mu      sync.Mutex // guards proc
	name    string
	bin     string
	conf    string
	client  string // host:port
	monitor string // host:port of /healthz
	cluster string // host:port of routes; "" when the server runs alone
	logs    *LogBuffer
	proc    *Proc // nil when killed
}

// StartNATSCluster starts n nats-servers forming one JetStream cluster
// and waits until every one reports healthy (a JetStream meta leader
// known and current). All are killed in t.Cleanup; their logs are shown
// when the test failed.
//
// The servers' ports are chosen free but are bound only by the servers,
// so another process may take one in between: under make test's load
// a server then died on "address already in use" for its route port,
// after its client port had answered, and the rest of a first start
// never elect a meta leader without it. A start on which a server ends
// is retried on new ports.
func StartNATSCluster(t testing.TB, n int, opts NATSOptions) *NATSCluster {
	t.Helper()
	return startNATSCluster(t, n, opts, FreeAddr)
}

// natsStartAttempts bounds the cluster's starts on new ports.
const natsStartAttempts = 3

func startNATSCluster(t testing.TB, n int, opts NATSOptions, freeAddr func(testing.TB) string) *NATSCluster {
	t.Helper()
	bin := NATSServerBinary(t)
	var err error
	for attempt := 1; attempt <= natsStartAttempts; attempt++ {
		c := newNATSCluster(t, bin, n, opts, freeAddr)
		if err = c.startAll(); err == nil {
			return c
		}
		t.Logf("nats cluster, start %d of %d: %v", attempt, natsStartAttempts, err)
		c.killAll()
	}
	t.Fatalf("nats cluster did not start in %d attempts: %v", natsStartAttempts, err)
	return nil
}

func newNATSCluster(t testing.TB, bin string, n int, opts NATSOptions, freeAddr func(testing.TB) string) *NATSCluster {
	t.Helper()
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
		if n > 1 { // one server runs alone: JetStream clustered needs peers
			clusterAddrs[i] = freeAddr(t)
			routes[i] = "nats-route://" + clusterAddrs[i]
		}
	}
	for i := range n {
		node := &natsNode{name: fmt.Sprintf("n%d", i+1), bin: bin, client: freeAddr(t), monitor: freeAddr(t), cluster: clusterAddrs[i], logs: &LogBuffer{}}
		node.conf = filepath.Join(dir, node.name+".conf")
		conf := natsConf(node, filepath.Join(dir, node.name), routes, c, opts)
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
	return c
}

// startAll starts every server and waits until each is healthy; it
// fails when one ends first or a wait times out.
func (c *NATSCluster) startAll() error {
	for _, node := range c.nodes {
		if err := node.start(); err != nil {
			return err
		}
	}
	for i := range c.nodes {
		if err := c.awaitHealthy(i); err != nil {
			return err
		}
	}
	return nil
}

func (c *NATSCluster) killAll() {
	for _, node := range c.nodes {
		node.kill()
	}
}

func natsConf(node *natsNode, store string, routes []string, c *NATSCluster, opts NATSOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\nlisten: %q\nhttp: %q\n", node.name, node.client, node.monitor)
	fmt.Fprintf(&b, "jetstream { store_dir: %q, max_memory_store: 64MB, max_file_store: 1GB }\n", store)
	if node.cluster != "" {
		fmt.Fprintf(&b, "cluster { name: fleet-test, listen: %q, routes: [%s] }\n", node.cluster, strings.Join(quoted(routes), ", "))
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
	return n.proc.Cmd().Process.Pid
}

// Restart starts server i again (after Kill) with the same store and
// waits until it is healthy: back in the cluster and caught up.
func (c *NATSCluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.nodes[i].kill()
	if err := c.nodes[i].start(); err != nil {
		t.Fatal(err)
	}
	c.AwaitHealthy(t, i)
}

// AwaitHealthy waits until server i's /healthz answers 200: JetStream
// is up, the cluster has a meta leader and this server is current.
func (c *NATSCluster) AwaitHealthy(t testing.TB, i int) {
	t.Helper()
	if err := c.awaitHealthy(i); err != nil {
		t.Fatal(err)
	}
}

func (c *NATSCluster) awaitHealthy(i int) error {
	node := c.nodes[i]
	url := "http://" + node.monitor + "/healthz"
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(Timeout)
	for {
		if node.exited() {
			return fmt.Errorf("nats-server %s ended while awaited healthy:\n%s", node.name, node.logs.String())
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for: nats-server %s healthy at %s", Timeout, node.name, url)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// MetaLeader is the name of the JetStream meta leader as server i's
// /jsz tells it ("" when it knows none).
func (c *NATSCluster) MetaLeader(t testing.TB, i int) string {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + c.nodes[i].monitor + "/jsz")
	if err != nil {
		t.Fatalf("nats-server %s /jsz: %v", c.nodes[i].name, err)
	}
	defer resp.Body.Close()
	var jsz struct {
		Meta *struct {
			Leader string `json:"leader"`
		} `json:"meta_cluster"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		t.Fatalf("nats-server %s /jsz: %v", c.nodes[i].name, err)
	}
	if jsz.Meta == nil {
		return ""
	}
	return jsz.Meta.Leader
}

// Logs are what server i has logged so far.
func (c *NATSCluster) Logs(i int) string { return c.nodes[i].logs.String() }

// start runs the server and waits until it listens on its client,
// monitoring and route ports. It fails when the server ends first (a
// port taken since it was chosen) or does not listen within Timeout.
func (n *natsNode) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, err := StartProc("nats-server "+n.name, exec.Command(n.bin, "-c", n.conf), n.logs)
	if err != nil {
		return err
	}
	n.proc = p
	addrs := []string{n.client, n.monitor}
	if n.cluster != "" {
		addrs = append(addrs, n.cluster)
	}
	for _, addr := range addrs {
		if err := p.AwaitListening(addr); err != nil {
			return err
		}
	}
	return nil
}

// exited tells whether the server started last has ended.
func (n *natsNode) exited() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc != nil && n.proc.Exited()
}

func (n *natsNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return
	}
	n.proc.Stop(syscall.SIGKILL)
	n.proc = nil
}
