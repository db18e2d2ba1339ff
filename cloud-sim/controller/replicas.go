package controller

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// Replicas sharing ingest (Config.Share). The broker hands each gateway
// publication to one live replica; what a replica received but had not
// written when it died is lost with it, and so is what it was sent in
// the instant before the broker noticed. Births, deaths and statuses
// are retained at the broker, so a resync (the broker sends every
// retained one again) repairs it: applying is order-free, and a
// retained message is the latest of its topic. A replica resyncs when it
// takes the scheduler lease (at a cold start of the whole cluster, or
// when the scheduling replica died) and, holding it, when another
// replica stopped renewing its membership without leaving. Metrics and
// events are not retained: a dead replica's unwritten ones are lost.

// memberTTL is how long a replica's membership lasts without renewal.
const memberTTL = 3 * time.Second

// resyncQuiet is how long a resync waits for the broker's next retained
// message before it ends.
const resyncQuiet = time.Second

type replicaSet struct {
	wg        sync.WaitGroup // the resync running
	resyncing atomic.Bool
	resyncs   atomic.Uint64 // resyncs done, for tests
}

type member struct {
	ID    string    `json:"id"`
	Until time.Time `json:"until"`
}

const memberKeyPrefix = "member\x00"

// onLead is called when this replica takes the scheduler lease.
func (c *Controller) onLead() { c.resync("scheduler lease taken") }

// resync has the broker send every retained birth, death and status
// again, once at a time, in the background.
func (c *Controller) resync(why string) {
	if c.cfg.Share == "" || c.con == nil || !c.replicas.resyncing.CompareAndSwap(false, true) {
		return
	}
	select {
	case <-c.stop: // closing: Close waits for the resync running
		c.replicas.resyncing.Store(false)
		return
	default:
	}
	c.replicas.wg.Add(1)
	go func() {
		defer c.replicas.wg.Done()
		defer c.replicas.resyncing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		go func() {
			select {
			case <-c.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		start := time.Now()
		n, err := c.con.Resync(ctx, resyncQuiet)
		if err != nil {
			c.log.Warn("resync from the broker's retained messages incomplete", "why", why, "received", n, "err", err)
			return
		}
		c.replicas.resyncs.Add(1)
		c.log.Info("resynced from the broker's retained messages", "why", why, "received", n, "took", time.Since(start).Round(time.Millisecond))
	}()
}

// Resyncs is how many resyncs this replica completed.
func (c *Controller) Resyncs() uint64 { return c.replicas.resyncs.Load() }

// replicaLoop renews this replica's membership every second and, on the
// scheduling replica, resyncs when another's lapsed.
func (c *Controller) replicaLoop() {
	defer c.done.Done()
	if c.cfg.Share == "" {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		now := c.cfg.Now()
		if err := c.store.Put(ctx, state.Meta, state.Key("member", c.cfg.ID), member{ID: c.cfg.ID, Until: now.Add(memberTTL)}); err != nil {
			c.log.Warn("replica membership not renewed", "err", err)
		}
		if c.sched.Leader() {
			c.reapMembers(ctx, now)
		}
		cancel()
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

// reapMembers forgets the replicas whose membership lapsed, and resyncs
// if there was any: they may have died with publications unwritten.
func (c *Controller) reapMembers(ctx context.Context, now time.Time) {
	var dead []string
	err := c.store.Each(ctx, state.Meta, func(key string, raw []byte) error {
		k, err := base64.RawURLEncoding.DecodeString(key)
		if err != nil || !strings.HasPrefix(string(k), memberKeyPrefix) {
			return nil
		}
		var m member
		if json.Unmarshal(raw, &m) == nil && m.ID != c.cfg.ID && now.After(m.Until) {
			dead = append(dead, m.ID)
		}
		return nil
	})
	if err != nil {
		c.log.Warn("replica memberships not read", "err", err)
		return
	}
	for _, id := range dead {
		if err := c.store.Delete(ctx, state.Meta, state.Key("member", id)); err != nil {
			c.log.Warn("lapsed replica membership not removed", "replica", id, "err", err)
		}
	}
	if len(dead) > 0 {
		c.resync("replica " + strings.Join(dead, ", ") + " stopped without leaving")
	}
}

// leave ends this replica's membership after its last write: a clean
// stop needs no resync.
func (c *Controller) leave(ctx context.Context) {
	if c.cfg.Share == "" {
		return
	}
	if err := c.store.Delete(ctx, state.Meta, state.Key("member", c.cfg.ID)); err != nil {
		c.log.Warn("replica membership not removed", "err", err)
	}
}

// changesSubject carries every replica's fleet changes to the others, so
// that each replica's event stream (SSE) and recent changes show the
// whole fleet, whichever replica applied what.
const changesSubject = "fleet.changes"

type relayed struct {
	Origin string         `json:"origin"`
	Change changes.Change `json:"change"`
}

// relayChanges hands this replica's changes to the others and delivers
// theirs to its hub. Changes are not durable: a replica that is down
// misses them (the inventory, in the store, does not).
func (c *Controller) relayChanges() error {
	stop, err := c.store.Serve(changesSubject, func(data []byte) []byte {
		var r relayed
		if json.Unmarshal(data, &r) == nil && r.Origin != c.cfg.ID {
			c.hub.Deliver(r.Change)
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.stopRelay = stop
	c.hub.SetRelay(func(ch changes.Change) {
		data, _ := json.Marshal(relayed{Origin: c.cfg.ID, Change: ch})
		if err := c.store.Broadcast(changesSubject, data); err != nil {
			c.log.Debug("change not relayed to the other replicas", "err", err)
		}
	})
	return nil
}
