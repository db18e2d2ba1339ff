package broker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// childStoreEnv, when set, makes the test binary a broker on the store it
// names (see TestMain): it prints its address and serves until its
// standard input closes or it is killed.
const childStoreEnv = "FLEET_BROKER_CHILD_STORE"

func TestMain(m *testing.M) {
	if path := os.Getenv(childStoreEnv); path != "" {
		os.Exit(runChildBroker(path))
	}
	os.Exit(m.Run())
}

func runChildBroker(path string) int {
	b, err := Start(Config{StorePath: path})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child broker:", err)
		return 1
	}
	fmt.Println(b.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent goes
	b.Close()
	return 0
}

// childBroker is a broker in a child process, to be killed with SIGKILL.
type childBroker struct {
	cmd  *exec.Cmd
	addr string
}

func startChildBroker(t *testing.T, path string) *childBroker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childStoreEnv+"="+path)
	cmd.Stderr = os.Stderr
	if _, err := cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childBroker{cmd: cmd}
	t.Cleanup(c.kill)
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if _, _, err := net.SplitHostPort(s[:max(len(s)-1, 0)]); err != nil {
			t.Fatalf("child broker printed %q, want its address", s)
		}
		c.addr = s[:len(s)-1]
	case <-time.After(testenv.Timeout):
		t.Fatal("child broker did not print its address")
	}
	return c
}

// kill ends the child with SIGKILL: nothing of the broker runs after it.
func (c *childBroker) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

// revisions records, per topic, the last revision sent and the last one
// acknowledged.
type revisions struct {
	mu         sync.Mutex
	sent, acks map[string]int
}

// TestRetainedSurviveSIGKILL: a broker killed with SIGKILL right after a
// PUBACK serves, once restarted on the same store, every retained message
// it acknowledged, each at least at the revision last acknowledged (and
// at most at the one last sent). Before issue 15 retained messages were
// written 500 ms behind, and the restarted broker served old ones.
func TestRetainedSurviveSIGKILL(t *testing.T) {
	const publishers, topics, killAfter = 4, 8, 150
	path := filepath.Join(t.TempDir(), "broker.db")
	child := startChildBroker(t, path)
	revs := &revisions{sent: map[string]int{}, acks: map[string]int{}}
	// Ends the other publishers' waits for a PUBACK that cannot come
	// (paho notices a lost connection only at its packet timeout).
	ctx, killed := context.WithCancel(context.Background())
	defer killed()
	var wg sync.WaitGroup
	for p := range publishers {
		c := dialPaho(t, child.addr, fmt.Sprintf("pub-%d", p))
		wg.Go(func() {
			for n := 1; ; n++ {
				topic := fmt.Sprintf("t/%d/%d", p, n%topics)
				if !revs.publish(ctx, c, topic, n) {
					return
				}
				if p == 0 && n == killAfter {
					child.kill() // right after this PUBACK
					killed()
					return
				}
			}
		})
	}
	wg.Wait()

	child = startChildBroker(t, path)
	got := retainedAfterRestart(t, child.addr, revs)
	for topic, acked := range revs.acks {
		if g := got[topic]; g < acked || g > revs.sent[topic] {
			t.Errorf("%s: restarted broker serves revision %d, want %d (last acknowledged) to %d (last sent)", topic, g, acked, revs.sent[topic])
		}
	}
	if len(revs.acks) < topics {
		t.Fatalf("only %d topics acknowledged before the kill, want at least %d", len(revs.acks), topics)
	}
}

// publish sends revision n to topic, retained at QoS 1, and records it;
// it reports whether the broker acknowledged it.
func (r *revisions) publish(ctx context.Context, c *paho.Client, topic string, n int) bool {
	r.mu.Lock()
	r.sent[topic] = n
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, testenv.Timeout)
	defer cancel()
	resp, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte(strconv.Itoa(n))})
	if err != nil || resp.ReasonCode >= 0x80 {
		return false
	}
	r.mu.Lock()
	r.acks[topic] = n
	r.mu.Unlock()
	return true
}

// dialPaho connects a paho client to addr; the broker's death ends it.
func dialPaho(t *testing.T, addr, id string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	return connectClient(t, c, conn, id)
}

func connectClient(t *testing.T, c *paho.Client, conn net.Conn, id string) *paho.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		conn.Close()
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}

// retainedAfterRestart subscribes to every topic of revs at addr and
// returns the revision of each retained message the broker serves,
// polling until each acknowledged topic has one at least as recent as
// acknowledged (or the deadline passes).
func retainedAfterRestart(t *testing.T, addr string, revs *revisions) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	changed := make(chan struct{}, 1)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			n, _ := strconv.Atoi(string(pr.Packet.Payload))
			mu.Lock()
			got[pr.Packet.Topic] = n
			mu.Unlock()
			select {
			case changed <- struct{}{}:
			default:
			}
			return true, nil
		}}})
	connectClient(t, c, conn, "reader")
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	served := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for topic, acked := range revs.acks {
			if got[topic] < acked {
				return false
			}
		}
		return true
	}
	// All are sent right after the SUBACK: a stale one is not replaced.
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for !served() {
		select {
		case <-changed:
		case <-deadline.C:
			return clone(&mu, got)
		}
	}
	return clone(&mu, got)
}

func clone(mu *sync.Mutex, m map[string]int) map[string]int {
	mu.Lock()
	defer mu.Unlock()
	return maps.Clone(m)
}
