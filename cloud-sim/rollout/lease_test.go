package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/faultproxy"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// clock is the time two replicas of a test share.
type clock struct {
	mu  sync.Mutex
	now time.Time
	// onRead, when set, is called once, at the next read, and taken off.
	onRead func()
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	f := c.onRead
	c.onRead = nil
	c.mu.Unlock()
	if f != nil {
		f()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// replicaPair is two schedulers, a and b, on one store and one clock.
func replicaPair(t *testing.T) (a, b *Scheduler, c *clock, st *state.Store) {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	c = &clock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
	for i, p := range []**Scheduler{&a, &b} {
		s, err := New(context.Background(), Config{Store: st, ID: string(rune('a' + i)), Fleet: fakeFleet{}, Commands: fakeCommands{}, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		*p = s
	}
	return a, b, c, st
}

// TestTermEndsLeadership: a scheduling replica whose loop was held up
// past its term (a step or a reload waiting on a NATS failover) stops
// scheduling when its term ends, before it learns whether another
// replica took the lease, and writes none of its view meanwhile. At its
// next renewal it steps down and reads its view again, whether another
// replica took the lease (it follows) or not (it takes it again). (Before,
// it scheduled until its next renewal, beside the new leader, and went
// on from its own view when it took the lease again.)
func TestTermEndsLeadership(t *testing.T) {
	tests := []struct {
		name      string
		otherTook bool
	}{
		{"another replica took the lease", true},
		{"no other replica did", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			a, b, c, st := replicaPair(t)
			a.renewLease(ctx, c.Now())
			if !a.Leader() {
				t.Fatal("a did not take the free lease")
			}
			r := &Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: []byte(`{"name": "web", "revision": 1, "image": "x"}`)}, State: Running}
			run := NewRun(r, &fleetv1.DeploymentSpec{Name: "web", Revision: 1})
			run.Add("gw-1", 1)
			a.mu.Lock()
			a.runs[r.ID] = run
			a.mu.Unlock()

			// a's loop is held up: no renewal for a term and a half.
			now := c.advance(LeaseTTL * 3 / 2)
			if a.Leader() {
				t.Error("a still schedules after its term ended")
			}
			if tt.otherTook {
				b.renewLease(ctx, now)
				if !b.Leader() {
					t.Fatal("b did not take the lapsed lease")
				}
			}
			// What a holds unwritten is not written over what b may have.
			if err := a.Flush(ctx); !errors.Is(err, ErrNoScheduler) {
				t.Errorf("a's flush after its term: %v, want ErrNoScheduler", err)
			}
			if _, err := st.GetEntry(ctx, state.Rollouts, state.Key("r", "r-1")); err == nil {
				t.Error("a, its term over, wrote its rollout to the store")
			}

			a.renewLease(ctx, c.advance(renewEvery))
			if a.Leader() == tt.otherTook || b.Leader() != tt.otherTook {
				t.Errorf("after a's renewal: a leads %v, b leads %v", a.Leader(), b.Leader())
			}
			if tt.otherTook && !a.changed.Load() {
				t.Error("a, following now, does not read its view again")
			}
			if !tt.otherTook {
				if _, ok := a.Status("r-1", false); ok {
					t.Error("a took the lease again and went on from its own view, not the store's")
				}
			}
		})
	}
}

// TestTakeOverOutlastingItsTerm: a replica that takes the lease and then
// reads the rollouts for longer than the term it took (a listing through
// a NATS failover took over 5 s in TestScaleOut) does not schedule when
// another replica took the lapsed lease meanwhile; one that kept the
// lease schedules with a term from after its read. (Before, both
// scheduled at once, each from its own view, and a finished rollout was
// left with a gateway's state older than its own in the store.)
func TestTakeOverOutlastingItsTerm(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		otherTook bool
	}{
		{"another replica took the lease meanwhile", true},
		{"no other replica did", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, c, _ := replicaPair(t)
			start := c.Now()
			// The clock moves on while a reads the rollouts (its first
			// reading of the clock after the lease was taken).
			c.mu.Lock()
			c.onRead = func() {
				now := c.advance(LeaseTTL + renewEvery)
				if tt.otherTook {
					b.renewLease(ctx, now)
				}
			}
			c.mu.Unlock()
			a.renewLease(ctx, start)
			now := c.Now()
			if tt.otherTook {
				if !b.Leader() {
					t.Fatal("b did not take the lapsed lease")
				}
				if a.leader.Load() {
					t.Fatal("a schedules beside b: it took the lease before its read, and b took it during the read")
				}
				return
			}
			if !a.Leader() {
				t.Fatal("a, which kept the lease through its read, does not schedule")
			}
			if left := a.termLeft(now); left < LeaseTTL-leaseMargin {
				t.Errorf("a schedules %s more; want a term from after its read (%s)", left, LeaseTTL-leaseMargin)
			}
		})
	}
}

// TestTakeOverQueuesUnsent: a replica taking the lease queues the
// dispatches the last leader stored but did not queue (its enqueue timed
// out and its term ended). Before, takeOver queued them before it counted
// itself the leader, and queue, which only a leader may do, dropped them
// without a word: the gateways waited 75 s for requeueLost, twelve of
// TestReplicasShareIngest's under make test's load.
func TestTakeOverQueuesUnsent(t *testing.T) {
	tests := []struct {
		name string
		same bool // the replica that stepped down takes the lease again
	}{
		{"another replica takes over", false},
		{"the same replica takes it again", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			a, b, c, st := replicaPair(t)
			a.renewLease(ctx, c.Now())
			if !a.Leader() {
				t.Fatal("a did not take the free lease")
			}
			// a stores a dispatch; its work item never reaches the queue.
			dep := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.example.com/web:2"}
			raw, _ := protojson.Marshal(dep)
			run := NewRun(&Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: raw}, State: Running, Phase: PhaseBatches, Batch: 1}, dep)
			run.Add("gw-1", 1)
			cmd := CommandID("r-1", "gw-1", 1, "deploy")
			g := run.gws["gw-1"]
			g.State, g.Attempt, g.CommandID, g.DispatchedAt = GatewayInProgress, 1, cmd, c.Now()
			run.dirtyRun, run.dirty = true, map[string]struct{}{"gw-1": {}}
			a.mu.Lock()
			a.runs["r-1"] = run
			a.mu.Unlock()
			if err := a.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			got := handedOut(t, st)

			// a's term ends unrenewed; then a replica takes the lease.
			next := b
			now := c.advance(LeaseTTL + time.Second)
			if tt.same {
				next = a
				a.renewLease(ctx, now)
			} else {
				a.stepDown("its term ended unrenewed")
				b.renewLease(ctx, now)
			}
			if !next.Leader() {
				t.Fatalf("%s did not take the lapsed lease", next.cfg.ID)
			}
			select {
			case item := <-got:
				var d Dispatch
				if err := json.Unmarshal([]byte(item), &d); err != nil || d.CommandID != cmd {
					t.Errorf("queued %s (%v), want gw-1's %s", item, err, cmd)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the dispatch the last leader stored but did not queue was not queued on taking the lease")
			}
		})
	}
}

// TestSlowStoreKeepsLeader: a scheduling replica whose store stops
// answering for a few seconds (the load of make test made NATS calls take
// over a second) keeps scheduling through it and renews its term after,
// without stepping down and reading its view again. (With a 3 s term and
// renewals bounded to 1.5 s, it stepped down several times a minute in
// TestReplicasShareIngest, and its rollout of 300 gateways, 8 s alone,
// took up to 100 s.)
func TestSlowStoreKeepsLeader(t *testing.T) {
	ctx := context.Background()
	own, err := state.Open(ctx, state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(own.Close)
	p, err := faultproxy.New(strings.TrimPrefix(own.URL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	st, err := state.Open(ctx, state.Config{URL: "nats://" + p.Addr(), Creds: own.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)

	var leads atomic.Int32
	s, err := New(ctx, Config{Store: st, ID: "a", Fleet: fakeFleet{}, Commands: fakeCommands{}, OnLead: func() { leads.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	s.Start(ctx)
	t.Cleanup(s.Close)
	if !s.Leader() {
		t.Fatal("a replica alone does not lead")
	}

	// The store is silent for 3 s; the leader is sampled meanwhile.
	var lapsed atomic.Bool
	sampled := make(chan struct{})
	p.Stall()
	go func() {
		defer close(sampled)
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if !s.Leader() {
				lapsed.Store(true)
			}
		}
	}()
	<-sampled
	p.Resume()
	resumed := time.Now()
	testenv.Eventually(t, "a term renewed after the store answers again", func() bool {
		return time.Unix(0, s.leaseUntil.Load()).After(resumed)
	})
	if lapsed.Load() {
		t.Error("the leader stopped scheduling while the store was slow")
	}
	if n := leads.Load(); n != 1 || !s.Leader() {
		t.Errorf("took the lease %d times, leading %v; want once, still leading", n, s.Leader())
	}
}

// TestReleaseHandsOver: a scheduling replica that stops gives its lease
// up, and another takes the rollouts over at its next renewal, not when
// the term lapses (10 s).
func TestReleaseHandsOver(t *testing.T) {
	ctx := context.Background()
	a, b, c, _ := replicaPair(t)
	a.renewLease(ctx, c.Now())
	b.renewLease(ctx, c.Now())
	if !a.Leader() || b.Leader() {
		t.Fatalf("leaders a %v, b %v; want a alone", a.Leader(), b.Leader())
	}
	a.Release(ctx)
	if a.Leader() {
		t.Error("a still schedules after releasing its lease")
	}
	b.renewLease(ctx, c.advance(renewEvery))
	if !b.Leader() {
		t.Error("b did not take the released lease at its next renewal")
	}
}
