package rollout

import (
	"context"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestReloadBehindTheWatch: a follower's reload that reads older records
// than its watch delivered (a listing from a NATS server that had not
// caught up) leaves the view marked changed, so the next refresh reads
// again, behindRetries times in a row at most; one that has caught up
// does not. (Before: the view was marked read, and a follower of
// TestScaleOut showed a finished rollout with one gateway IN_PROGRESS
// for good after a NATS node's loss.)
func TestReloadBehindTheWatch(t *testing.T) {
	ctx := context.Background()
	s := newScheduler(t)
	r := &Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Deployment: []byte(`{"name": "web", "revision": 1, "image": "x"}`)}, State: Running}
	run := NewRun(r, &fleetv1.DeploymentSpec{Name: "web", Revision: 1})
	run.Add("gw-1", 1)
	s.runs[r.ID] = run
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	_, stored, err := readRuns(ctx, s.cfg.Store)
	if err != nil || stored == 0 {
		t.Fatalf("readRuns: revision %d, %v", stored, err)
	}

	// The watch delivered a write the listing does not hold yet.
	s.noteWatched(state.Entry{Key: "r/r-1", Revision: stored + 5})
	for i := range behindRetries {
		s.changed.Store(false) // as the follower's loop does before a reload
		if err := s.reload(ctx); err != nil {
			t.Fatal(err)
		}
		if !s.changed.Load() {
			t.Fatalf("reload %d read revision %d behind the watch's %d and marked the view read", i+1, stored, stored+5)
		}
	}
	s.changed.Store(false)
	if err := s.reload(ctx); err != nil {
		t.Fatal(err)
	}
	if s.changed.Load() {
		t.Fatalf("still reading again after %d reloads behind the watch", behindRetries)
	}

	// A deletion's revision is not waited for; a listing that caught up
	// marks the view read.
	s.watched.Store(stored)
	s.noteWatched(state.Entry{Key: "r/r-0", Revision: stored + 50, Deleted: true})
	if got := s.watched.Load(); got != stored {
		t.Errorf("a deletion's revision was recorded: %d", got)
	}
	s.changed.Store(false)
	if err := s.reload(ctx); err != nil {
		t.Fatal(err)
	}
	if s.changed.Load() {
		t.Error("a reload that caught up with the watch left the view changed")
	}
}
