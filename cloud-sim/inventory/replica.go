package inventory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Replicated inventories (Config.Replicated): several controller replicas
// share one NATS store, and the broker hands each gateway publication to
// one of them (an MQTT v5 shared subscription). Each replica applies what
// it receives to its copy, remembers it as pending, and writes the record
// over the revision it last read (compare-and-set). Every replica watches
// the bucket and takes the others' writes into its copy at once. When a
// write meets a newer revision, the record is read again and the pending
// publications applied on top: applying is order-free (sessions,
// revisions, the time each report was made), so the result is the same
// whichever replica applied what first.

// pendingOp is one change applied to a gateway since its record was last
// written: a publication, or credentials a set-credentials delivered.
type pendingOp struct {
	r    *mqttclient.Received
	regs []Registry
	// newest is set for a status that, when applied, became its
	// deployment's: a later one of the same deployment supersedes it.
	newest bool
}

// replay applies o to g again, without publishing a change.
func (o pendingOp) replay(g *Gateway, limits Limits) {
	if o.r != nil {
		if limit, why := g.refuse(limits, o.r.Topic, o.r.Message, o.r.At); limit != "" {
			g.noteRefusal(limit, why, o.r.At)
		} else {
			g.apply(o.r.Topic, o.r.Message, o.r.At)
		}
		return
	}
	g.noteCredentials(o.regs)
}

// remember keeps o as pending for key k in a replicated inventory. A
// status that supersedes the one kept last for the same deployment takes
// its place: replaying both leaves what replaying the later one leaves
// (it is newer, and newer is transitive), so a burst of one gateway's
// statuses (a pull's progress, a backlog after a restart) keeps one
// publication until the next flush, not each. Not while the key is being
// written: the write took the ops kept so far, and drops them when it
// lands. inv.mu is held.
func (inv *Inventory) remember(k string, o pendingOp) {
	if inv.pending == nil {
		return
	}
	ops := inv.pending[k]
	if n := len(ops); n > 0 && o.supersedes(ops[n-1]) {
		if _, writing := inv.inflight[k]; !writing {
			ops[n-1] = o
			return
		}
	}
	inv.pending[k] = append(ops, o)
}

// supersedes reports whether o, a status that became its deployment's,
// makes old, kept before it, redundant: a status of the same deployment
// that became its deployment's too, and that o is newer than.
func (o pendingOp) supersedes(old pendingOp) bool {
	if !o.newest || !old.newest || o.r.Topic.Deployment != old.r.Topic.Deployment {
		return false
	}
	s, ok := o.r.Message.(*fleetv1.DeploymentStatus)
	was, wasOK := old.r.Message.(*fleetv1.DeploymentStatus)
	return ok && wasOK && newerReport(s.GetRevision(), reportedAt(s), was.GetRevision(), reportedAt(was))
}

// flushReplicated writes the changed gateways over the revisions last
// read; a record another replica wrote meanwhile is read again, the
// pending publications applied on top of it, and written with the next
// flush.
func (inv *Inventory) flushReplicated(ctx context.Context, st *state.Store) error {
	inv.mu.Lock()
	inv.pruneOrphans(inv.now())
	if len(inv.dirty) == 0 {
		inv.mu.Unlock()
		return nil
	}
	batch := make(map[string]state.Versioned, len(inv.dirty))
	taken := make(map[string]int, len(inv.dirty))
	for k := range inv.dirty {
		if g := inv.gateways[k]; g != nil {
			batch[k] = state.Versioned{Value: g.stored(), Revision: inv.revs[k]}
			taken[k] = len(inv.pending[k])
			inv.inflight[k] = struct{}{}
		}
	}
	inv.dirty = map[string]struct{}{}
	inv.mu.Unlock()
	defer inv.landed(batch)

	revs, conflicts, err := st.PutIfMany(ctx, state.Gateways, batch)
	inv.mu.Lock()
	for k, rev := range revs {
		inv.revs[k] = max(inv.revs[k], rev)
		if rest := inv.pending[k][taken[k]:]; len(rest) > 0 {
			inv.pending[k] = rest
		} else {
			delete(inv.pending, k)
		}
	}
	if err != nil { // written with the next flush
		for k := range batch {
			if _, ok := revs[k]; !ok {
				inv.dirty[k] = struct{}{}
			}
		}
	}
	inv.mu.Unlock()
	for _, k := range conflicts {
		e, gerr := st.GetEntry(ctx, state.Gateways, k)
		if gerr != nil && !errors.Is(gerr, state.ErrNotFound) {
			err = errors.Join(err, gerr)
		}
		inv.mu.Lock()
		inv.dirty[k] = struct{}{}
		if gerr == nil {
			err = errors.Join(err, inv.rebase(e))
		}
		inv.mu.Unlock()
	}
	return err
}

// landed ends a write of batch's keys: the watch's entries for them that
// came meanwhile are taken now, against the revisions the write left.
// Until then they were put aside: this replica's own write would look
// like another's, and its publications would be applied twice.
func (inv *Inventory) landed(batch map[string]state.Versioned) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for k := range batch {
		delete(inv.inflight, k)
		if e, ok := inv.deferred[k]; ok {
			delete(inv.deferred, k)
			if err := inv.rebase(e); err != nil {
				inv.log.Warn("inventory: stored gateway not readable; ignored", "key", k, "err", err)
			}
		}
	}
}

// Watch keeps a replicated inventory current with what the other
// replicas write, from the store's values on: it returns once they are
// loaded. Call stop to end it.
func (inv *Inventory) Watch(ctx context.Context, st *state.Store) (stop func(), err error) {
	return st.Watch(ctx, state.Gateways, func(e state.Entry) {
		if e.Deleted {
			return // gateways are never removed
		}
		inv.mu.Lock()
		var err error
		if _, writing := inv.inflight[e.Key]; writing {
			inv.deferred[e.Key] = e // the latest; see landed
		} else {
			err = inv.rebase(e)
		}
		inv.mu.Unlock()
		if err != nil {
			inv.log.Warn("inventory: stored gateway not readable; ignored", "key", e.Key, "err", err)
		}
	})
}

// rebase takes stored entry e as the gateway's record, with what this
// replica applied but has not written on top, if it is newer than what
// the replica holds. inv.mu is held.
func (inv *Inventory) rebase(e state.Entry) error {
	if e.Revision <= inv.revs[e.Key] {
		return nil
	}
	s := new(state.Gateway)
	if err := state.Decode(e.Value, s); err != nil {
		return fmt.Errorf("inventory: gateway %s: %w", e.Key, err)
	}
	fresh := restore(s)
	for _, o := range inv.pending[e.Key] {
		o.replay(fresh, inv.limits)
	}
	if g := inv.gateways[e.Key]; g != nil {
		fresh.metrics = g.metrics // memory only, per replica
		*g = *fresh               // in place: the natural order holds g
	} else {
		inv.gateways[e.Key] = fresh
		inv.adopt(e.Key, fresh)
	}
	inv.revs[e.Key] = e.Revision
	inv.remote++
	return nil
}

// Fetch returns a copy of one gateway, read from the store first when a
// replicated inventory does not hold it yet: a replica that just started,
// or whose watch lags, takes rollout work for gateways another replica
// applied the births of.
func (inv *Inventory) Fetch(ctx context.Context, st *state.Store, tenant, id string) (*Gateway, bool) {
	if g, ok := inv.Get(tenant, id); ok || inv.revs == nil {
		return g, ok
	}
	e, err := st.GetEntry(ctx, state.Gateways, state.Key(tenant, id))
	if err != nil {
		return nil, false
	}
	inv.mu.Lock()
	err = inv.rebase(e)
	inv.mu.Unlock()
	if err != nil {
		inv.log.Warn("inventory: stored gateway not readable", "key", e.Key, "err", err)
	}
	return inv.Get(tenant, id)
}

// Remote is how many records written by other replicas (or before this
// one started) a replicated inventory has taken in.
func (inv *Inventory) Remote() uint64 {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	return inv.remote
}

// An orphan is a publication of a gateway this replica does not know
// yet: another replica may have applied its birth and not written it.
type orphan struct {
	r       mqttclient.Received
	expires time.Time
}

// Orphans are kept a while, and a bounded number of them: a replica
// learns another's births within a flush interval.
const (
	orphanTTL        = time.Minute
	maxOrphans       = 32     // per gateway, the latest
	maxOrphanTargets = 10_000 // gateways with orphans
)

// orphan keeps r, of the unknown gateway k, in a replicated inventory.
// inv.mu is held.
func (inv *Inventory) orphan(k string, r mqttclient.Received) {
	if inv.orphans == nil {
		return
	}
	os, known := inv.orphans[k]
	if !known && len(inv.orphans) >= maxOrphanTargets {
		inv.pruneOrphans(inv.now())
		if len(inv.orphans) >= maxOrphanTargets {
			return
		}
	}
	if len(os) == maxOrphans {
		os = os[1:]
	}
	inv.orphans[k] = append(os, orphan{r: r, expires: inv.now().Add(orphanTTL)})
}

// adopt applies to g, just created, the orphans kept for it, as pending
// publications. inv.mu is held.
func (inv *Inventory) adopt(k string, g *Gateway) {
	os := inv.orphans[k]
	if len(os) == 0 {
		return
	}
	delete(inv.orphans, k)
	for _, o := range os {
		r := o.r
		po := pendingOp{r: &r}
		po.replay(g, inv.limits)
		inv.remember(k, po)
	}
	inv.dirty[k] = struct{}{}
}

// pruneOrphans forgets the orphans kept longer than orphanTTL. inv.mu
// is held.
func (inv *Inventory) pruneOrphans(now time.Time) {
	for k, os := range inv.orphans {
		if now.After(os[len(os)-1].expires) {
			delete(inv.orphans, k)
		}
	}
}
