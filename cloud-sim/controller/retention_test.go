package controller

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
)

func newTestController(t *testing.T, now func() time.Time) *Controller {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "k"), filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(context.Background(), Config{Store: st, Keys: keys, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPrune: finished batches and rollouts older than the retention are
// forgotten, in memory and in the store; unfinished, active or recent
// ones are kept.
func TestPrune(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := newTestController(t, func() time.Time { return now })
	old, recent := now.Add(-40*24*time.Hour), now.Add(-time.Hour)
	addBatch := func(id string, created time.Time, states ...string) {
		b := &Batch{ID: id, CreatedAt: created}
		for i, st := range states {
			cmd := &commandRecord{Command: Command{ID: id + "-" + string(rune('a'+i)), Batch: id, State: st, SentAt: created}}
			if cmd.Final() {
				cmd.FinishedAt = created.Add(time.Minute)
			}
			c.commands[cmd.ID] = cmd
			c.dirtyCmds[cmd.ID] = struct{}{}
			b.Commands = append(b.Commands, cmd.ID)
		}
		c.batches[id] = b
		if err := c.store.Put(context.Background(), state.Commands, state.Key("batch", id), b); err != nil {
			t.Fatal(err)
		}
	}
	addBatch("old-done", old, StateSucceeded, StateFailed)
	addBatch("old-pending", old, StateSucceeded, StatePending)
	addBatch("recent-done", recent, StateSucceeded)
	addRollout := func(id, st string, finished time.Time) {
		spec := RolloutSpec{Tenant: "acme", Deployment: []byte(`{"name": "web", "revision": 1, "image": "x"}`)}
		run := &rolloutRun{r: &Rollout{ID: id, Spec: spec, State: st, FinishedAt: finished, CreatedAt: finished}, gws: map[string]*RolloutGateway{}, dirty: map[string]struct{}{}, dirtyRun: true}
		run.add("gw-1", 1)
		c.rollouts[id] = run
	}
	addRollout("r-old", RolloutSucceeded, old)
	addRollout("r-active", RolloutRunning, time.Time{})
	if err := c.flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	n, err := c.prune(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 { // old-done: 2 commands and the batch; r-old: its gateway and itself
		t.Errorf("pruned %d records, want 5", n)
	}
	for _, tt := range []struct {
		id   string
		kept bool
	}{{"old-done", false}, {"old-pending", true}, {"recent-done", true}} {
		_, inMemory := c.batches[tt.id]
		var b Batch
		err := c.store.Get(context.Background(), state.Commands, state.Key("batch", tt.id), &b)
		if inMemory != tt.kept || errors.Is(err, state.ErrNotFound) == tt.kept {
			t.Errorf("batch %s: in memory %v, store error %v; want kept %v", tt.id, inMemory, err, tt.kept)
		}
	}
	if _, ok := c.commands["old-done-a"]; ok {
		t.Error("a command of a pruned batch is still in memory")
	}
	var cmd commandRecord
	if err := c.store.Get(context.Background(), state.Commands, state.Key("cmd", "old-done-a"), &cmd); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("a command of a pruned batch is still stored: %v", err)
	}
	if _, ok := c.rollouts["r-old"]; ok {
		t.Error("an old finished rollout is still in memory")
	}
	if _, ok := c.rollouts["r-active"]; !ok {
		t.Error("the active rollout was pruned")
	}
	runs, _, err := c.readRollouts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := runs["r-old"]; ok {
		t.Error("an old finished rollout is still stored")
	}
}
