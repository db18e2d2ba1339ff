package scenarios

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// consoleStream is one open console's event stream (GET /v1/events, as
// console.js opens it): what it received and how late.
type consoleStream struct {
	mu     sync.Mutex
	seen   int
	lagged int
	final  bool            // saw the rollout's end
	late   []time.Duration // receive time minus the change's time
	done   chan struct{}   // closed when the stream ends
}

func (s *consoleStream) read(resp *http.Response) {
	defer close(s.done)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "event: lagged" {
			s.mu.Lock()
			s.lagged++
			s.mu.Unlock()
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ch changes.Change
		if json.Unmarshal([]byte(data), &ch) != nil || ch.At.IsZero() {
			continue
		}
		now := time.Now()
		s.mu.Lock()
		s.seen++
		s.late = append(s.late, now.Sub(ch.At))
		s.final = s.final || ch.Kind == "rollout.succeeded"
		s.mu.Unlock()
	}
}

// BenchmarkConsoleEventFanout: 100 consoles hold the event stream open
// while a rollout to 1,000 simulated gateways runs. It reports how late
// the changes reach the consoles (from the controller taking them in to a
// console reading them: p50, p99, max) and whether every console saw every
// change (missed: the most changes one console saw minus the fewest;
// lagged: "lagged" notices). The goal: every console sees every change
// within 1 s.
func BenchmarkConsoleEventFanout(b *testing.B) {
	const consoles, gateways = 100, 1000
	c := &cloud{dataDir: b.TempDir(), mqtt: testenv.FreeAddr(b)}
	c.cfg = serve.Config{DataDir: c.dataDir, MQTTListen: c.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), StaleAfter: time.Minute, APIMaxStreams: consoles + 8}
	c.start(b)
	b.Cleanup(func() { c.Close() })
	f, err := startFleet(b, c, gateways)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	waitOnlineTB(b, c, gateways)
	rev := 0
	var late []time.Duration
	var missed, lagged int
	for b.Loop() {
		rev++
		streams := openStreams(b, c, consoles)
		v := createRollout(b, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
			Deployment: deploymentJSON(rev, fmt.Sprintf("registry.example.com/web:%d", rev)), SkipRegistryCheck: true,
			Strategy: api.Strategy{MaxInFlight: 2000}})
		testenv.Eventually(b, "the rollout finished", func() bool {
			var st api.RolloutView
			c.get(b, "/v1/rollouts/"+v.ID, &st)
			return !st.Active
		})
		streams.waitFinal(10 * time.Second)
		counts := make([]int, 0, consoles)
		for _, s := range streams.list {
			s.mu.Lock()
			counts = append(counts, s.seen)
			late = append(late, s.late...)
			lagged += s.lagged
			s.mu.Unlock()
		}
		streams.close()
		missed += slices.Max(counts) - slices.Min(counts)
	}
	slices.Sort(late)
	if len(late) == 0 {
		b.Fatal("no console saw a change")
	}
	q := func(p float64) float64 { return float64(late[int(p*float64(len(late)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(float64(len(late))/float64(b.N*consoles), "changes/console")
	b.ReportMetric(float64(missed), "missed")
	b.ReportMetric(float64(lagged), "lagged")
}

type streamSet struct {
	list   []*consoleStream
	cancel context.CancelFunc
}

func (s streamSet) close() {
	s.cancel()
	for _, st := range s.list {
		<-st.done
	}
}

// waitFinal polls until every stream has seen the rollout's end, or for
// at most wait (a stream that missed it shows in "missed").
func (s streamSet) waitFinal(wait time.Duration) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for {
		all := true
		for _, st := range s.list {
			st.mu.Lock()
			all = all && st.final
			st.mu.Unlock()
		}
		if all {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			return
		}
	}
}

// openStreams opens n event streams of tenant sim, as n consoles would.
func openStreams(b *testing.B, c *cloud, n int) streamSet {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	set := streamSet{cancel: cancel}
	for range n {
		req, _ := http.NewRequestWithContext(ctx, "GET", c.APIURL+"/v1/events?tenant=sim", nil)
		req.Header.Set("Authorization", "Bearer "+c.APIToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			cancel()
			b.Fatalf("event stream: %s", resp.Status)
		}
		s := &consoleStream{done: make(chan struct{})}
		go s.read(resp)
		set.list = append(set.list, s)
	}
	return set
}
