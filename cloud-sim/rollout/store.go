package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// reload replaces the rollouts and specs in memory with the stored ones.
// A listing older than what the watch delivered (read from a NATS server
// that had not caught up: a follower showed a finished rollout with one
// gateway in progress for good after a node's loss) leaves the view
// marked changed, so the next refresh reads again, behindRetries times at
// most in a row (the newest write may be a deletion, which no listing
// shows).
func (s *Scheduler) reload(ctx context.Context) error {
	runs, rev, err := readRuns(ctx, s.cfg.Store)
	if err != nil {
		return err
	}
	if err := s.specs.load(ctx, s.cfg.Store); err != nil {
		return err
	}
	s.mu.Lock()
	s.runs = runs
	s.mu.Unlock()
	if watched := s.watched.Load(); rev < watched && s.behind.Add(1) <= behindRetries {
		s.log.Debug("rollout view read behind the watch; reading again", "read", rev, "watched", watched)
		s.changed.Store(true)
	} else {
		s.behind.Store(0)
	}
	return nil
}

// behindRetries bounds the reloads in a row that read behind the watch.
const behindRetries = 40

// noteWatched records the revision of a rollout written elsewhere.
func (s *Scheduler) noteWatched(e state.Entry) {
	for !e.Deleted {
		old := s.watched.Load()
		if e.Revision <= old || s.watched.CompareAndSwap(old, e.Revision) {
			break
		}
	}
	s.changed.Store(true)
}

// readRuns reads the rollouts and their gateways, and returns the revision
// of the newest record it read.
func readRuns(ctx context.Context, st *state.Store) (map[string]*Run, uint64, error) {
	runs := map[string]*Run{}
	gws := map[string][]*Gateway{}
	rev, err := st.EachAt(ctx, state.Rollouts, func(_ string, raw []byte) error {
		var probe struct {
			Gateway string `json:"gateway"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			return err
		}
		if probe.Gateway != "" {
			var g state.RolloutGateway
			if err := json.Unmarshal(raw, &g); err != nil {
				return err
			}
			gws[g.Rollout] = append(gws[g.Rollout], restoreGateway(&g))
			return nil
		}
		var sr state.Rollout
		if err := json.Unmarshal(raw, &sr); err != nil {
			return err
		}
		r := restoreRollout(&sr)
		spec := new(fleetv1.DeploymentSpec)
		if err := protojson.Unmarshal(r.Spec.Deployment, spec); err != nil {
			return err
		}
		run := NewRun(r, spec)
		run.dirtyRun = false
		runs[r.ID] = run
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	for id, list := range gws {
		if run := runs[id]; run != nil {
			run.restore(list)
		}
	}
	return runs, rev, nil
}

// restore puts stored gateways back in dispatch order.
func (run *Run) restore(list []*Gateway) {
	sort.Slice(list, func(i, j int) bool {
		if list[i].Batch != list[j].Batch {
			return list[i].Batch < list[j].Batch
		}
		return list[i].Gateway < list[j].Gateway
	})
	for _, g := range list {
		run.gws[g.Gateway] = g
		run.order = append(run.order, g.Gateway)
	}
}

// Flush writes the changed rollouts, their gateways and the last specs.
func (s *Scheduler) Flush(ctx context.Context) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	batch := map[string]any{}
	type written struct {
		run *Run
		gws []string
		r   bool
	}
	var taken []written
	leading, kept := s.Leader(), 0
	for id, run := range s.runs {
		if !leading {
			// Its term ended with changes unwritten: they are not written
			// over what another replica may have written since. They are
			// written once this replica renews its term, and dropped if
			// it steps down (its view is read again).
			kept += len(run.dirty)
			if run.dirtyRun {
				kept++
			}
			continue
		}
		w := written{run: run, r: run.dirtyRun}
		if run.dirtyRun {
			batch[state.Key("r", id)] = run.R.stored()
			run.dirtyRun = false
		}
		for gw := range run.dirty {
			batch[state.Key("g", id, gw)] = run.gws[gw].stored()
			w.gws = append(w.gws, gw)
		}
		run.dirty = map[string]struct{}{}
		taken = append(taken, w)
	}
	s.mu.Unlock()
	if kept > 0 {
		return errors.Join(fmt.Errorf("%w: %d rollout records not written: this replica's scheduler term ended; try again", ErrNoScheduler, kept),
			s.specs.flush(ctx, s.cfg.Store))
	}
	err := s.cfg.Store.PutMany(ctx, state.Rollouts, batch)
	if err != nil {
		// Written with the next flush (a failed write is not lost: what
		// the store lacks, a worker cannot resolve).
		s.mu.Lock()
		for _, w := range taken {
			w.run.dirtyRun = w.run.dirtyRun || w.r
			for _, gw := range w.gws {
				w.run.dirty[gw] = struct{}{}
			}
		}
		s.mu.Unlock()
	}
	return errors.Join(err, s.specs.flush(ctx, s.cfg.Store))
}

// Prune forgets, in memory and in the store, the rollouts that finished
// before cutoff. It returns how many records it removed and the ids of
// the commands those rollouts may have sent.
func (s *Scheduler) Prune(ctx context.Context, cutoff time.Time) (int, []string, error) {
	var keys, cmds []string
	s.mu.Lock()
	for id, run := range s.runs {
		if run.active() || run.R.FinishedAt.After(cutoff) {
			continue
		}
		for gw := range run.gws {
			keys = append(keys, state.Key("g", id, gw))
		}
		keys = append(keys, state.Key("r", id))
		cmds = append(cmds, run.commandIDs()...)
		delete(s.runs, id)
	}
	s.mu.Unlock()
	for _, k := range keys {
		if err := s.cfg.Store.Delete(ctx, state.Rollouts, k); err != nil {
			return 0, nil, err
		}
	}
	return len(keys), cmds, nil
}
