package dispatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// TestPrune: finished batches older than the cutoff are forgotten, in
// memory and in the store, with their commands, and so are the commands
// named (a finished rollout's); unfinished or recent ones are kept.
func TestPrune(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	d := newDispatcher(t, openStore(t))
	old, recent := now.Add(-40*24*time.Hour), now.Add(-time.Hour)
	addBatch := func(id string, created time.Time, states ...State) {
		b := &Batch{ID: id, CreatedAt: created}
		for i, st := range states {
			rec := &record{Command: Command{ID: id + "-" + string(rune('a'+i)), Batch: id, State: st, SentAt: created}}
			if rec.Final() {
				rec.FinishedAt = created.Add(time.Minute)
			}
			d.commands[rec.ID] = rec
			d.dirty[rec.ID] = struct{}{}
			b.Commands = append(b.Commands, rec.ID)
		}
		d.batches[id] = b
		if err := d.cfg.Store.Put(context.Background(), state.Commands, state.Key("batch", id), b); err != nil {
			t.Fatal(err)
		}
	}
	addBatch("old-done", old, Succeeded, Failed)
	addBatch("old-pending", old, Succeeded, Pending)
	addBatch("recent-done", recent, Succeeded)
	d.commands["ro-1"] = &record{Command: Command{ID: "ro-1", Batch: "r-old", State: Succeeded}}
	d.dirty["ro-1"] = struct{}{}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	n, err := d.Prune(context.Background(), now.Add(-30*24*time.Hour), []string{"ro-1", "ro-unknown"})
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 { // old-done: 2 commands and the batch; ro-1
		t.Errorf("pruned %d records, want 4", n)
	}
	for _, tt := range []struct {
		id   string
		kept bool
	}{{"old-done", false}, {"old-pending", true}, {"recent-done", true}} {
		_, inMemory := d.batches[tt.id]
		var b state.Batch
		err := d.cfg.Store.Get(context.Background(), state.Commands, state.Key("batch", tt.id), &b)
		if inMemory != tt.kept || errors.Is(err, state.ErrNotFound) == tt.kept {
			t.Errorf("batch %s: in memory %v, store error %v; want kept %v", tt.id, inMemory, err, tt.kept)
		}
	}
	for _, id := range []string{"old-done-a", "ro-1"} {
		if _, ok := d.Command(id); ok {
			t.Errorf("command %s is still in memory", id)
		}
		var rec state.Command
		if err := d.cfg.Store.Get(context.Background(), state.Commands, state.Key("cmd", id), &rec); !errors.Is(err, state.ErrNotFound) {
			t.Errorf("command %s is still stored: %v", id, err)
		}
	}
}
