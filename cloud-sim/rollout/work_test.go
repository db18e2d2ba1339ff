package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestResolve: a work item resolves only to a command the stored rollout
// dispatched, with the stored tenant and spec; anything else is refused
// naming what is wrong.
func TestResolve(t *testing.T) {
	s := newScheduler(t)
	dep := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.example.com/web:2"}
	raw, _ := protojson.Marshal(dep)
	run := NewRun(&Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: raw}, State: Running}, dep)
	for _, id := range []string{"gw-dispatched", "gw-queued", "gw-rollback"} {
		run.Add(id, 1)
	}
	g := run.gws["gw-dispatched"]
	g.State, g.Attempt, g.CommandID = GatewayInProgress, 1, CommandID("r-1", "gw-dispatched", 1, "deploy")
	g = run.gws["gw-rollback"]
	g.State, g.Attempt, g.CommandID, g.RollbackRevision = GatewayRollingBack, 1, CommandID("r-1", "gw-rollback", 1, "deploy"), 3
	g.PrevSpec = json.RawMessage(`{"name": "web", "revision": 1, "image": "registry.example.com/web:1"}`)
	s.runs["r-1"] = run
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		item      Dispatch
		wantImage string
		wantRev   int64
		wantErr   string // the refusal's field
	}{
		{name: "deploy", item: Dispatch{"r-1", "gw-dispatched", CommandID("r-1", "gw-dispatched", 1, "deploy")}, wantImage: "registry.example.com/web:2", wantRev: 2},
		{name: "rollback", item: Dispatch{"r-1", "gw-rollback", CommandID("r-1", "gw-rollback", 1, "rollback")}, wantImage: "registry.example.com/web:1", wantRev: 3},
		{name: "empty", item: Dispatch{}, wantErr: "rollout"},
		{name: "unknown rollout", item: Dispatch{"r-2", "gw-dispatched", CommandID("r-2", "gw-dispatched", 1, "deploy")}, wantErr: "rollout"},
		{name: "gateway not in the rollout", item: Dispatch{"r-1", "gw-other", CommandID("r-1", "gw-other", 1, "deploy")}, wantErr: "gateway"},
		{name: "gateway not dispatched", item: Dispatch{"r-1", "gw-queued", CommandID("r-1", "gw-queued", 1, "deploy")}, wantErr: "commandId"},
		{name: "another command id", item: Dispatch{"r-1", "gw-dispatched", "ro-forged"}, wantErr: "commandId"},
		{name: "rollback not decided", item: Dispatch{"r-1", "gw-dispatched", CommandID("r-1", "gw-dispatched", 1, "rollback")}, wantErr: "commandId"},
		{name: "deploy after the rollback", item: Dispatch{"r-1", "gw-rollback", CommandID("r-1", "gw-rollback", 1, "deploy")}, wantErr: "commandId"},
	}
	rs := NewResolver(s.cfg.Store) // one for all: the later cases meet the rollout's kept spec
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := rs.Resolve(context.Background(), tt.item)
			if tt.wantErr != "" {
				var fe *errdefs.FieldError
				if !errors.As(err, &fe) || fe.Field != tt.wantErr || !errors.Is(err, errdefs.ErrPermissionDenied) {
					t.Fatalf("Resolve(%+v) = %+v, %v; want a PERMISSION_DENIED refusal of field %s", tt.item, w, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.Tenant != "acme" || w.Gateway != tt.item.Gateway || w.CommandID != tt.item.CommandID ||
				w.Spec.GetImage() != tt.wantImage || w.Spec.GetRevision() != tt.wantRev {
				t.Errorf("got %s/%s %s %s revision %d; want acme/%s %s %s revision %d", w.Tenant, w.Gateway, w.CommandID,
					w.Spec.GetImage(), w.Spec.GetRevision(), tt.item.Gateway, tt.item.CommandID, tt.wantImage, tt.wantRev)
			}
		})
	}
}

// TestStepQueuesResolvableWork: what the scheduler queues resolves at
// once, on any replica: it is stored before it is queued, and the item
// carries neither tenant nor spec.
func TestStepQueuesResolvableWork(t *testing.T) {
	gws := map[string]inventory.Observation{"gw-1": online(), "gw-2": online()}
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	s, err := New(context.Background(), Config{Store: st, Fleet: fakeFleet{gws: gws}, Commands: fakeCommands{}})
	if err != nil {
		t.Fatal(err)
	}
	lead(t, s)
	dep := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.example.com/web:2"}
	raw, _ := protojson.Marshal(dep)
	run := plan(&Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: raw}, State: Running, Phase: PhaseBatches, Batch: 1, CreatedAt: time.Now()}, dep,
		[]Target{{ID: "gw-1", Online: true}, {ID: "gw-2", Online: true}})
	s.runs["r-1"] = run

	var mu sync.Mutex
	var got []string
	done := make(chan struct{}, 2)
	stop, err := st.Consume(context.Background(), 2, func(ctx context.Context, data []byte, _ bool) error {
		defer func() { done <- struct{}{} }()
		if strings.Contains(string(data), "spec") || strings.Contains(string(data), "tenant") {
			t.Errorf("work item %s carries more than ids", data)
		}
		var d Dispatch
		if err := json.Unmarshal(data, &d); err != nil {
			t.Error(err)
			return nil
		}
		w, err := NewResolver(st).Resolve(ctx, d)
		if err != nil {
			t.Errorf("Resolve(%s): %v", data, err)
			return nil
		}
		mu.Lock()
		got = append(got, w.Gateway+" "+w.Spec.GetImage())
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	s.step(context.Background())
	for range 2 {
		select {
		case <-done:
		case <-time.After(testenv.Timeout):
			t.Fatal("the queued work was not consumed")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Errorf("resolved %v, want gw-1 and gw-2", got)
	}
}

// handedOut is every work item st's queue hands out from now on, until
// the test ends.
func handedOut(t *testing.T, st *state.Store) <-chan string {
	t.Helper()
	got := make(chan string, 8)
	stop, err := st.Consume(t.Context(), 1, func(_ context.Context, data []byte, _ bool) error { got <- string(data); return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return got
}

// TestRequeueIsNotDropped: a replica taking the lease queues again a
// dispatch no replica has sent even when a work item of that command was
// queued before and lost (taken by a worker that died, or with a NATS
// server), within the work queue's 10 minutes of duplicate detection.
// (Before, the new item had the command's id, the queue dropped it as a
// duplicate, and after TestScaleOut's kills 11 gateways were never sent
// their deploy.)
func TestRequeueIsNotDropped(t *testing.T) {
	ctx := context.Background()
	s := newScheduler(t)
	st := s.cfg.Store
	dep := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.example.com/web:2"}
	raw, _ := protojson.Marshal(dep)
	run := NewRun(&Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: raw}, State: Running, Phase: PhaseBatches, Batch: 1}, dep)
	run.Add("gw-1", 1)
	cmd := CommandID("r-1", "gw-1", 1, "deploy")
	g := run.gws["gw-1"]
	g.State, g.Attempt, g.CommandID = GatewayInProgress, 1, cmd
	s.runs["r-1"] = run

	// The last leader queued it; its worker took it and died.
	first, _ := json.Marshal(Dispatch{Rollout: "r-1", Gateway: "gw-1", CommandID: cmd})
	if _, err := st.EnqueueMany(ctx, state.WorkSubjects, []state.WorkItem{{ID: cmd, Data: first}}); err != nil {
		t.Fatal(err)
	}
	got := handedOut(t, st)
	select {
	case <-got: // the lost one
	case <-time.After(testenv.Timeout):
		t.Fatal("the first item was not handed out")
	}

	s.requeue(ctx)
	select {
	case item := <-got:
		var d Dispatch
		if err := json.Unmarshal([]byte(item), &d); err != nil || d.CommandID != cmd || d.Gateway != "gw-1" {
			t.Errorf("queued again: %s (%v), want gw-1's %s", item, err, cmd)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the dispatch queued again on taking the lease never reached a worker: dropped as a duplicate of the lost item")
	}
}

// TestRequeueLost: the scheduling replica queues again, under a new work
// item id, a dispatch that stayed unsent (no replica recorded its
// command) for lostAfter, then not again before another lostAfter; a
// dispatch whose command was sent is left alone.
func TestRequeueLost(t *testing.T) {
	ctx := context.Background()
	s := newScheduler(t)
	now := s.cfg.Now()
	sent := CommandID("r-1", "gw-sent", 1, "deploy")
	s.cfg.Commands = fakeCommands{sent: dispatch.Pending}
	dep := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.example.com/web:2"}
	raw, _ := protojson.Marshal(dep)
	run := NewRun(&Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: raw}, State: Running, Phase: PhaseBatches, Batch: 1}, dep)
	for _, gw := range []string{"gw-lost", "gw-sent"} {
		run.Add(gw, 1)
		g := run.gws[gw]
		g.State, g.Attempt, g.CommandID, g.DispatchedAt = GatewayInProgress, 1, CommandID("r-1", gw, 1, "deploy"), now
	}
	s.runs["r-1"] = run
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := handedOut(t, s.cfg.Store)
	next := func(within time.Duration) (string, bool) {
		select {
		case item := <-got:
			var d Dispatch
			_ = json.Unmarshal([]byte(item), &d)
			return d.Gateway, true
		case <-time.After(within):
			return "", false
		}
	}
	tests := []struct {
		name  string
		after time.Duration
		want  string
	}{
		{"not yet lost", lostAfter - time.Second, ""},
		{"lost", lostAfter + time.Second, "gw-lost"},
		{"queued again just now", lostAfter + 20*time.Second, ""},
		{"lost again", 2*lostAfter + 2*time.Second, "gw-lost"},
	}
	for _, tt := range tests {
		s.requeueLost(ctx, now.Add(tt.after))
		if tt.want != "" {
			if gw, ok := next(testenv.Timeout); gw != tt.want {
				t.Errorf("%s (%s after the dispatch): queued %q (%v), want %s", tt.name, tt.after, gw, ok, tt.want)
			}
		}
		if gw, ok := next(300 * time.Millisecond); ok {
			t.Errorf("%s (%s after the dispatch): %s queued too", tt.name, tt.after, gw)
		}
	}
}
