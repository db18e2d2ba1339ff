package dispatch

import (
	"context"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func timestampOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// Resend publishes again, with the same ids, the commands that have no
// final outcome: the agent answers one it already executed with its
// recorded reply, so an outcome lost in a controller crash comes back.
// Start runs it once.
func (d *Dispatcher) Resend(ctx context.Context) {
	recs := d.unfinished()
	for _, rec := range recs {
		raw, err := d.cfg.Cipher.Decrypt(rec.Payload)
		cmd := new(fleetv1.Command)
		if err == nil {
			err = proto.Unmarshal(raw, cmd)
		}
		if err == nil {
			err = d.pub.Publish(ctx, rec.Tenant, rec.Gateway, cmd)
		}
		if err != nil {
			d.log.Warn("cannot resend unfinished command", "command_id", rec.ID, "err", err)
		}
	}
	if len(recs) > 0 {
		d.log.Info("resent unfinished commands to recover their outcomes", "count", len(recs))
	}
}

// unfinished lists the unfinished commands in the order they were first
// sent: batch by batch, and within a batch as listed (a gateway's
// credentials before its deploy).
func (d *Dispatcher) unfinished() []record {
	d.mu.Lock()
	defer d.mu.Unlock()
	batches := make([]*Batch, 0, len(d.batches))
	for _, b := range d.batches {
		batches = append(batches, b)
	}
	sort.Slice(batches, func(i, j int) bool { return batches[i].CreatedAt.Before(batches[j].CreatedAt) })
	var recs []record
	for _, b := range batches {
		for _, id := range d.sorted(b).Commands {
			if rec := d.commands[id]; rec != nil && !rec.Final() {
				recs = append(recs, *rec)
			}
		}
	}
	return recs
}

// Outcome is a command's state, code and message, for the rollout
// scheduler; ok is false for an unknown command.
func (d *Dispatcher) Outcome(id string) (st State, code, msg string, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rec := d.commands[id]
	if rec == nil {
		return "", "", "", false
	}
	return rec.State, rec.Code, rec.Message, true
}

// Flush writes the commands changed since the last flush; on failure
// they are written with the next.
func (d *Dispatcher) Flush(ctx context.Context) error {
	d.mu.Lock()
	if len(d.dirty) == 0 {
		d.mu.Unlock()
		return nil
	}
	cmds := make(map[string]any, len(d.dirty))
	ids := make([]string, 0, len(d.dirty))
	for id := range d.dirty {
		if rec := d.commands[id]; rec != nil {
			cmds[state.Key("cmd", id)] = rec.stored()
			ids = append(ids, id)
		}
	}
	d.dirty = map[string]struct{}{}
	d.mu.Unlock()
	err := d.cfg.Store.PutMany(ctx, state.Commands, cmds)
	if err != nil {
		d.mu.Lock()
		for _, id := range ids {
			d.dirty[id] = struct{}{}
		}
		d.mu.Unlock()
	}
	return err
}

// Prune forgets, in memory and in the store, the batches whose commands
// all finished before cutoff, and the commands ids (a finished rollout's);
// it returns how many records it removed.
func (d *Dispatcher) Prune(ctx context.Context, cutoff time.Time, ids []string) (int, error) {
	var keys []string
	d.mu.Lock()
	for id, b := range d.batches {
		if !d.finishedBefore(b, cutoff) {
			continue
		}
		for _, cid := range b.Commands {
			delete(d.commands, cid)
			keys = append(keys, state.Key("cmd", cid))
		}
		delete(d.batches, id)
		delete(d.listless, id)
		delete(d.unsorted, id)
		keys = append(keys, state.Key("batch", id))
	}
	for _, cid := range ids {
		if _, ok := d.commands[cid]; ok {
			delete(d.commands, cid)
			keys = append(keys, state.Key("cmd", cid))
		}
	}
	d.mu.Unlock()
	for _, k := range keys {
		if err := d.cfg.Store.Delete(ctx, state.Commands, k); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

// finishedBefore reports whether b was created, and all its commands
// finished, before cutoff. d.mu is held.
func (d *Dispatcher) finishedBefore(b *Batch, cutoff time.Time) bool {
	if !b.CreatedAt.Before(cutoff) {
		return false
	}
	for _, cid := range b.Commands {
		if rec := d.commands[cid]; rec != nil && (!rec.Final() || rec.FinishedAt.After(cutoff)) {
			return false
		}
	}
	return true
}
