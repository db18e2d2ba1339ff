package controller

import (
	"context"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// DefaultRetention is how long finished commands and rollouts are kept.
const DefaultRetention = 30 * 24 * time.Hour

// prune forgets, in memory and in the store, batches whose commands all
// finished before now-retention, commands of rollouts finished that long
// ago, and those rollouts. It returns how many records it removed.
func (c *Controller) prune(ctx context.Context, now time.Time) (int, error) {
	cutoff := now.Add(-c.cfg.Retention)
	var keys []string
	var rolloutKeys []string
	c.mu.Lock()
	for id, b := range c.batches {
		old := b.CreatedAt.Before(cutoff)
		for _, cid := range b.Commands {
			if cmd := c.commands[cid]; cmd != nil && (!cmd.Final() || cmd.FinishedAt.After(cutoff)) {
				old = false
			}
		}
		if !old {
			continue
		}
		for _, cid := range b.Commands {
			delete(c.commands, cid)
			keys = append(keys, state.Key("cmd", cid))
		}
		delete(c.batches, id)
		keys = append(keys, state.Key("batch", id))
	}
	for id, run := range c.rollouts {
		if active(run.r.State) || run.rollingBack() || run.r.FinishedAt.After(cutoff) {
			continue
		}
		for gw, g := range run.gws {
			rolloutKeys = append(rolloutKeys, state.Key("g", id, gw))
			for _, what := range []string{"deploy", "rollback"} {
				cid := rolloutCommandID(id, gw, g.Attempt, what)
				if _, ok := c.commands[cid]; ok {
					delete(c.commands, cid)
					keys = append(keys, state.Key("cmd", cid))
				}
				if _, ok := c.commands[cid+"c"]; ok { // its credentials
					delete(c.commands, cid+"c")
					keys = append(keys, state.Key("cmd", cid+"c"))
				}
			}
		}
		rolloutKeys = append(rolloutKeys, state.Key("r", id))
		delete(c.rollouts, id)
	}
	c.mu.Unlock()
	for _, k := range keys {
		if err := c.store.Delete(ctx, state.Commands, k); err != nil {
			return 0, err
		}
	}
	for _, k := range rolloutKeys {
		if err := c.store.Delete(ctx, state.Rollouts, k); err != nil {
			return 0, err
		}
	}
	if n := len(keys) + len(rolloutKeys); n > 0 {
		c.log.Info("old commands and rollouts forgotten", "records", n, "older_than", c.cfg.Retention)
	}
	return len(keys) + len(rolloutKeys), nil
}
