package controller

import (
	"context"
	"time"
)

// DefaultRetention is how long finished commands and rollouts are kept.
const DefaultRetention = 30 * 24 * time.Hour

// prune forgets, in memory and in the store, batches whose commands all
// finished before now-retention, rollouts finished that long ago, and
// their commands. It returns how many records it removed.
func (c *Controller) prune(ctx context.Context, now time.Time) (int, error) {
	cutoff := now.Add(-c.cfg.Retention)
	nr, cmds, err := c.sched.Prune(ctx, cutoff)
	if err != nil {
		return 0, err
	}
	nc, err := c.disp.Prune(ctx, cutoff, cmds)
	if err != nil {
		return 0, err
	}
	if n := nr + nc; n > 0 {
		c.log.Info("old commands and rollouts forgotten", "records", n, "older_than", c.cfg.Retention)
	}
	return nr + nc, nil
}
