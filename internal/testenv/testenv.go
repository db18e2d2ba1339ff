// Package testenv starts the real parts that tests of both programs need:
// the project's binaries, a Mosquitto broker that can be restarted, agent
// processes and the Docker Engine. It imports neither program: the
// embedded broker's test helpers are in cloud-sim/broker/brokertest, the
// recording console in cloud-sim/console/consoletest. Everything it starts
// is stopped in t.Cleanup; waits poll with deadlines.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	dockerclient "github.com/docker/docker/client"
)

// Timeout bounds every wait of this package.
const Timeout = 20 * time.Second

var (
	buildMu sync.Mutex
	built   = map[string]string{}
	binDir  string
)

// PrebuiltEnv names the directory in which make test (scripts/test.sh)
// puts the binaries it builds before any test starts: agent,
// fleet-agent-ecr, cloud-sim, nats-server and testapp. The test processes
// then share one build made outside their timeouts, instead of each
// building the same at once on a cold cache inside them: in CI that took
// minutes of a scenario shard's time, and the shards timed out.
const PrebuiltEnv = "FLEET_TEST_BIN"

// Prebuilt is the binary name in PrebuiltEnv's directory, when it is set
// and the binary is there.
func Prebuilt(name string) (string, bool) {
	dir := os.Getenv(PrebuiltEnv)
	if dir == "" {
		return "", false
	}
	p := filepath.Join(dir, name)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		return "", false
	}
	return p, true
}

// Binary builds the main package pkg ("agent", "cloud-sim") of this module
// once per test process, static as make dist ships it, and returns the
// binary's path; a prebuilt one (PrebuiltEnv) is used as it is.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	out := buildOnce(t, filepath.Base(pkg), "./"+pkg, "-ldflags", "-s -w")
	if pkg == "agent" {
		// The agent runs its ECR token helper from beside its executable.
		ecr := buildOnce(t, "fleet-agent-ecr", "./agent/cmd/fleet-agent-ecr", "-ldflags", "-s -w")
		if filepath.Dir(ecr) != filepath.Dir(out) {
			t.Fatalf("%s is not beside %s: %s holds only one of them", ecr, out, PrebuiltEnv)
		}
	}
	return out
}

// buildOnce builds pkg (static, with the go build flags given) as name,
// once per test process, into a directory of its own, unless it is
// prebuilt.
func buildOnce(t testing.TB, name, pkg string, flags ...string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if p, ok := Prebuilt(name); ok {
		built[name] = p
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
	out := filepath.Join(binDir, name)
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", out, pkg)...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[name] = out
	return out
}

// Broker is a broker a test can restart.
type Broker interface {
	Name() string
	URL() string
	// Restart stops the broker and starts it again on the same address with
	// the same persistent state.
	Restart(t testing.TB)
}

type mosquitto struct {
	mu   sync.Mutex // guards proc
	bin  string
	conf string
	addr string
	logs *LogBuffer
	proc *Proc // nil when stopped
}

// Mosquitto starts a real Mosquitto with persistence on a free loopback
// port. Without a mosquitto binary the test is skipped, except under CI
// (CI set), where .ci/run installs it and its absence is a failure.
func Mosquitto(t testing.TB) Broker {
	t.Helper()
	return MosquittoQueue(t, 10000)
}

// MosquittoQueue is Mosquitto queueing at most maxQueued messages for a
// client (max_queued_messages: QoS 0 ones too for a connected client;
// 0 is no limit).
func MosquittoQueue(t testing.TB, maxQueued int) Broker {
	t.Helper()
	bin := mosquittoBinary(t)
	dir := t.TempDir()
	return startMosquitto(t, bin, dir, func(port string) string {
		return fmt.Sprintf(`listener %s 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
autosave_interval 0
max_queued_messages %d
set_tcp_nodelay true
user root
log_dest stderr
log_type error
log_type warning
log_type notice
`, port, dir, maxQueued)
	}, FreeAddr)
}

// MosquittoWith starts a real Mosquitto with the configuration that conf
// makes for the port it is to listen on (a "listener <port> 127.0.0.1"
// line), skipped as Mosquitto is.
func MosquittoWith(t testing.TB, conf func(port string) string) Broker {
	t.Helper()
	return startMosquitto(t, mosquittoBinary(t), t.TempDir(), conf, FreeAddr)
}

func mosquittoBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mosquitto not installed; .ci/run installs it: %v", err)
		}
		t.Skip("mosquitto not installed (apt-get install -y mosquitto)")
	}
	return bin
}

// startMosquitto writes the configuration conf makes, in dir, for a port
// of freeAddr and starts mosquitto with it, on another port when it ended
// while starting (the port taken since it was chosen). It is stopped in
// t.Cleanup.
func startMosquitto(t testing.TB, bin, dir string, conf func(port string) string, freeAddr func(testing.TB) string) *mosquitto {
	t.Helper()
	m := &mosquitto{bin: bin, conf: filepath.Join(dir, "mosquitto.conf")}
	FirstStart(t, "mosquitto", func() error {
		m.addr, m.logs = freeAddr(t), &LogBuffer{}
		_, port, _ := net.SplitHostPort(m.addr)
		if err := os.WriteFile(m.conf, []byte(conf(port)), 0o600); err != nil {
			return fmt.Errorf("mosquitto configuration: %w", err)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.start()
	})
	t.Cleanup(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.stop()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.logs.String())
		}
	})
	return m
}

func (m *mosquitto) Name() string { return "mosquitto" }
func (m *mosquitto) URL() string  { return "mqtt://" + m.addr }

// PID is the running mosquitto's process id (a benchmark reads its CPU
// time), 0 when it is stopped.
func (m *mosquitto) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return 0
	}
	return m.proc.Cmd().Process.Pid
}

// start runs mosquitto and waits until it accepts connections; it fails
// at once, with the log, when mosquitto ends first. m.mu is held.
func (m *mosquitto) start() error {
	p, err := StartProc("mosquitto", exec.Command(m.bin, "-c", m.conf), m.logs)
	if err != nil {
		return err
	}
	m.proc = p
	if err := p.AwaitListening(m.addr); err != nil {
		m.stop()
		return err
	}
	return nil
}

// stop ends mosquitto; m.mu is held.
func (m *mosquitto) stop() {
	if m.proc == nil {
		return
	}
	// SIGTERM makes mosquitto write its persistence file.
	m.proc.Stop(syscall.SIGTERM)
	m.proc = nil
}

func (m *mosquitto) Restart(t testing.TB) {
	t.Helper()
	if err := m.restart(); err != nil {
		t.Fatal(err)
	}
}

// restart starts mosquitto again on its port, which its clients know: a
// mosquitto that ends while starting (the port taken meanwhile) is an
// error at once.
func (m *mosquitto) restart() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stop()
	return m.start()
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Eventually polls cond until it holds or Timeout passes.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", Timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AwaitCount polls count until it reaches want. It fails when count has
// not moved for Timeout, not after a fixed time: a wait for thousands of
// messages takes as long as the machine's load makes it, and a count
// that stops short is still caught.
func AwaitCount(t testing.TB, what string, want int, count func() int) {
	t.Helper()
	last, moved := -1, time.Now()
	for {
		n := count()
		if n >= want {
			return
		}
		if n != last {
			last, moved = n, time.Now()
		} else if time.Since(moved) > Timeout {
			t.Fatalf("%s: %d of %d, and no more for %v", what, n, want, Timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Agent is a fleet-agent process.
type Agent struct {
	Tenant, Gateway, StateDir string
	// ResourcePrefix begins its containers' names (--resource-prefix):
	// one of its own, since the tests' agents share one engine, whose
	// names are one namespace (two shards deploying "web" at revision 1
	// at once collided).
	ResourcePrefix string
	args           []string
	bin            string
	cmd            *exec.Cmd
	logs           *LogBuffer
	done           chan struct{}
	exitCode       int
}

// StartAgent runs bin/fleet-agent against brokerURL with its own state
// directory. Extra flags are appended.
func StartAgent(t testing.TB, brokerURL, tenant, gateway string, extra ...string) *Agent {
	t.Helper()
	a := &Agent{Tenant: tenant, Gateway: gateway, StateDir: t.TempDir(), ResourcePrefix: UniqueID("t"), bin: Binary(t, "agent"), logs: &LogBuffer{}}
	a.args = append([]string{"--broker", brokerURL, "--tenant", tenant, "--gateway", gateway, "--state-dir", a.StateDir,
		"--reconnect-min", "100ms", "--reconnect-max", "1s", "--log-level", "debug", "--resource-prefix", a.ResourcePrefix}, extra...)
	a.Start(t)
	t.Cleanup(func() {
		a.Kill()
		if t.Failed() {
			t.Logf("agent %s log:\n%s", gateway, a.logs.String())
		}
	})
	return a
}

// Start starts the agent process again (after Kill or Term) with the same
// state directory.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	a.cmd = exec.Command(a.bin, a.args...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	a.done = make(chan struct{})
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		a.exitCode = cmd.ProcessState.ExitCode()
		close(done)
	}(a.cmd, a.done)
}

// Kill sends SIGKILL and waits for the process to end.
func (a *Agent) Kill() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
}

// Term sends SIGTERM and returns the exit code.
func (a *Agent) Term(t testing.TB) int {
	t.Helper()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(Timeout):
		t.Fatalf("agent did not exit within %v of SIGTERM", Timeout)
	}
	return a.exitCode
}

// PID is the process id of the running agent.
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// Logs returns what the agent has logged so far.
func (a *Agent) Logs() string { return a.logs.String() }

// LogBuffer is a log sink that goroutines may write to at once.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Logger is a logger for components whose goroutines may outlive the
// test (autopaho reports a broker's DISCONNECT from a goroutine of its
// own, which nothing waits for): logging through t.Output() after the
// test has completed panics. It writes into a buffer, which is logged
// if the test fails.
func Logger(t testing.TB) *slog.Logger {
	logs := &LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logged:\n%s", logs.String())
		}
	})
	return slog.New(slog.NewTextHandler(logs, nil))
}

// DockerClient returns a client of the local Docker Engine. Without an
// engine the test is skipped, except under CI, where it fails.
func DockerClient(t testing.TB) *dockerclient.Client {
	t.Helper()
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err == nil {
		_, err = cli.Ping(context.Background())
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Docker Engine unavailable: %v", err)
		}
		t.Skipf("Docker Engine unavailable: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// cleanupTimeout bounds RemoveOwned's calls to the engine. An engine can
// hang on a container (Docker's own bugs with health-check execs, moby
// #36661), and a cleanup without a bound then held its test until the
// shard's 15-minute timeout, with nothing said about where.
const cleanupTimeout = 2 * time.Minute

// RemoveOwned removes, at cleanup, every container labelled with owner and
// the images whose references start with imagePrefix (none when it is
// empty: the engine is shared with other tests and the machine's owner).
// The test fails if the engine does not answer within cleanupTimeout.
func RemoveOwned(t testing.TB, cli *dockerclient.Client, owner, imagePrefix string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		doing := "listing " + owner + "'s containers"
		defer func() {
			if ctx.Err() != nil {
				t.Errorf("cleanup: the Docker Engine did not answer within %v, %s", cleanupTimeout, doing)
			}
		}()
		cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "io.fleet-agent.owner="+owner))})
		for _, c := range cs {
			doing = fmt.Sprintf("removing container %.12s %v (%s, %s)", c.ID, c.Names, c.State, c.Status)
			if cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}) != nil && ctx.Err() != nil {
				return
			}
		}
		doing = "removing the images of " + imagePrefix
		if imagePrefix == "" {
			return // "" is a prefix of every image's name
		}
		imgs, _ := cli.ImageList(ctx, image.ListOptions{})
		for _, im := range imgs {
			// By its references, not its id: an image of the same content
			// another test pulled from its own registry has the same id,
			// and removing the id would take that test's tag too. Untagged
			// images (a tag that moved) keep only their digests.
			for _, r := range append(im.RepoTags, im.RepoDigests...) {
				if strings.HasPrefix(r, imagePrefix) {
					cli.ImageRemove(ctx, r, image.RemoveOptions{Force: true, PruneChildren: true})
				}
			}
		}
	})
}

// UniqueID is prefix and a number unique to this run: a gateway id for a
// real agent, whose containers carry it in their owner label. Two test
// processes run at once (make test's scenario shards) share the engine, and
// an agent removes the containers of its owner that no deployment of its
// own holds, so a fixed id would let one test's agent remove another's.
func UniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)
}

// SocketProxy forwards a unix socket to the Docker Engine's, so that a test
// can cut an agent off from the engine (Stop) and give it back (Start).
type SocketProxy struct {
	Path   string // the proxy's socket; the agent's --docker-host is unix://Path
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
}

// NewSocketProxy starts a proxy to the engine's socket /var/run/docker.sock.
func NewSocketProxy(t testing.TB) *SocketProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "dockerproxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &SocketProxy{Path: filepath.Join(dir, "docker.sock"), target: "/var/run/docker.sock", conns: map[net.Conn]struct{}{}}
	p.Start(t)
	t.Cleanup(p.Stop)
	return p
}

// Start listens again.
func (p *SocketProxy) Start(t testing.TB) {
	t.Helper()
	os.Remove(p.Path)
	ln, err := net.Listen("unix", p.Path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c, ln)
		}
	}()
}

func (p *SocketProxy) serve(c net.Conn, ln net.Listener) {
	up, err := net.Dial("unix", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln != ln {
		// Accepted just before Stop, which did not see it: a connection
		// the client keeps alive would reach the engine after Stop
		// (TestEngineUnreachableReportedAndRecovered's "reachable:true").
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// Stop closes the socket and every connection through it.
func (p *SocketProxy) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}
