package rollout

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func newScheduler(t *testing.T) *Scheduler {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	s, err := New(context.Background(), Config{Store: st, Fleet: fakeFleet{}, Commands: fakeCommands{}})
	if err != nil {
		t.Fatal(err)
	}
	lead(t, s)
	return s
}

// lead makes s the scheduling replica, as its loop does, on a clock that
// stands still: its term never ends.
func lead(t *testing.T, s *Scheduler) {
	t.Helper()
	now := time.Now()
	s.cfg.Now = func() time.Time { return now }
	s.renewLease(context.Background(), now)
	if !s.Leader() {
		t.Fatal("the scheduler did not take the free lease")
	}
}

// TestPrune: rollouts finished before the cutoff are forgotten, in memory
// and in the store, and the ids of their commands returned; active ones
// are kept.
func TestPrune(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	s := newScheduler(t)
	add := func(id string, st State, finished time.Time) {
		r := &Rollout{ID: id, Spec: Spec{Tenant: "acme", Deployment: []byte(`{"name": "web", "revision": 1, "image": "x"}`)}, State: st, FinishedAt: finished, CreatedAt: finished}
		run := NewRun(r, &fleetv1.DeploymentSpec{Name: "web", Revision: 1})
		run.Add("gw-1", 1)
		s.runs[id] = run
	}
	add("r-old", Succeeded, now.Add(-40*24*time.Hour))
	add("r-active", Running, time.Time{})
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	n, cmds, err := s.Prune(context.Background(), now.Add(-30*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 { // r-old: its gateway and itself
		t.Errorf("pruned %d records, want 2", n)
	}
	if want := CommandID("r-old", "gw-1", 0, "deploy"); !slices.Contains(cmds, want) || !slices.Contains(cmds, want+"c") {
		t.Errorf("command ids %v, want %s and its credentials'", cmds, want)
	}
	if _, ok := s.Status("r-old", false); ok {
		t.Error("an old finished rollout is still in memory")
	}
	if _, ok := s.Status("r-active", false); !ok {
		t.Error("the active rollout was pruned")
	}
	runs, _, err := readRuns(context.Background(), s.cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := runs["r-old"]; ok {
		t.Error("an old finished rollout is still stored")
	}
	if _, ok := runs["r-active"]; !ok {
		t.Error("the active rollout is no longer stored")
	}
}
