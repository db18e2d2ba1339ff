package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// LeaseTTL is how long a scheduler lease lasts without renewal: a replica
// that dies hands the rollouts to another within this (one that stops
// releases it at once). It was 3 s: under load, with the store's calls
// taking over a second, leaders lost their terms several times a minute
// and each takeover read the rollouts again, so a rollout of 300
// gateways that takes 8 s alone took 55-100 s in make test. A dead
// scheduler costs a rollout these seconds once; a lease that flaps costs
// it many times over (Kubernetes' leader election holds 15 s).
const LeaseTTL = 10 * time.Second

const leaseName = "rollout-scheduler"

// renewEvery is how often the leader renews its lease, and a follower
// looks whether it is free to take.
const renewEvery = time.Second

// leaseMargin is how long before the end of the term it last wrote a
// leader stops scheduling: what it wrote last has landed, and clocks that
// differ by less agree its term is over, before another replica can take
// the lease.
const leaseMargin = 2 * time.Second

// stepBudget bounds a step (and the term bounds it too): one held up by a
// slow store is cut, so that the loop renews the lease in time, and what
// it did not write or queue is done at the next tick.
const stepBudget = LeaseTTL / 4

// tick is how often the scheduler steps the rollouts.
const tick = 100 * time.Millisecond

// Fleet is what the scheduler reads of the inventory.
type Fleet interface {
	Observe(key, deployment string) inventory.Observation
	IDs(f inventory.Filter) []string
}

// Config configures a Scheduler.
type Config struct {
	Store *state.Store
	// ID names this replica in the lease; APIURL is its API, named in the
	// lease so that followers can point at the leader.
	ID       string
	APIURL   string
	Fleet    Fleet
	Commands Commands
	Changes  *changes.Hub
	// OnLead, when set, is called each time this replica takes the lease.
	OnLead func()
	Logger *slog.Logger
	Now    func() time.Time
}

// Scheduler steps every active rollout ten times a second while this
// replica holds the scheduler lease; the others keep a read-only view,
// read again from the store when a watch says it changed, and hand the
// rollout changes they are asked for to it (replicas.go).
type Scheduler struct {
	cfg   Config
	log   *slog.Logger
	hub   *changes.Hub
	specs *Specs

	mu   sync.Mutex
	runs map[string]*Run // guarded by mu

	// flushMu serializes Flush: when one returns, what was changed before
	// it was called is stored, even when another took it to write.
	flushMu sync.Mutex

	leader atomic.Bool   // holds the scheduler lease
	ticks  atomic.Uint64 // steps made, for tests
	// changed is set when another replica wrote a rollout: a follower
	// reads them again (followerRefresh at most).
	changed atomic.Bool
	// watched is the newest revision of a rollout record the watch
	// delivered (not a deletion); behind counts the reloads in a row that
	// read older (see reload).
	watched atomic.Uint64
	behind  atomic.Int32
	stops   []func() // the watch and the changes served; set by Start
	// unqueued are dispatches stored or decided but not queued yet;
	// only the loop's goroutine (step, requeue) touches them.
	unqueued []queued
	// standBy is when this replica may try to take the lease again after
	// a failed takeover (loop goroutine only).
	standBy time.Time
	// leaseUntil is the end of the term this replica last wrote to its
	// lease (Unix nanoseconds): it schedules, and takes changes handed
	// over, only before it (Leader), whatever leader says.
	leaseUntil atomic.Int64
	// requeued is when the scheduler last queued each unsent command
	// again (requeueLost); the loop's goroutine only.
	requeued map[string]time.Time
	requeues atomic.Uint64 // requeues made (againID)
	stop     chan struct{}
	done     sync.WaitGroup
}

// New loads the rollouts and the last specs from the store.
func New(ctx context.Context, cfg Config) (*Scheduler, error) {
	if cfg.Store == nil || cfg.Fleet == nil || cfg.Commands == nil {
		return nil, errors.New("rollout: Store, Fleet and Commands are required")
	}
	if cfg.Changes == nil {
		cfg.Changes = new(changes.Hub)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Scheduler{cfg: cfg, log: cfg.Logger, hub: cfg.Changes, specs: NewSpecs(), runs: map[string]*Run{}, stop: make(chan struct{})}
	if err := s.reload(ctx); err != nil {
		return nil, fmt.Errorf("rollout: load: %w", err)
	}
	return s, nil
}

// Specs is the memory of the last spec deployed to each gateway.
func (s *Scheduler) Specs() *Specs { return s.specs }

// Start takes the lease if it is free and starts stepping; Close stops.
func (s *Scheduler) Start(ctx context.Context) {
	if err := s.serveChanges(ctx); err != nil {
		s.log.Error("rollout changes from other replicas not served", "err", err)
	}
	now := s.cfg.Now()
	if held, err := s.cfg.Store.Acquire(ctx, leaseName, s.cfg.ID, s.cfg.APIURL, now, LeaseTTL); err == nil && held {
		s.leaseUntil.Store(now.Add(LeaseTTL).UnixNano())
		s.leader.Store(true) // the rollouts New loaded are current
		if s.cfg.OnLead != nil {
			s.cfg.OnLead()
		}
	}
	s.done.Add(1)
	go s.loop()
}

// Close stops the scheduler and waits for it.
func (s *Scheduler) Close() {
	close(s.stop)
	s.done.Wait()
	for _, stop := range s.stops {
		stop()
	}
}

// Leader reports whether this replica schedules rollouts: it took the
// lease, and the term it last wrote has not ended. A replica whose loop
// was held up past its term (a step or a reload waiting on a NATS
// failover) no longer schedules, even before it learns that another
// replica took the lease: that one may already be scheduling.
func (s *Scheduler) Leader() bool {
	return s.leader.Load() && s.inTerm(s.cfg.Now())
}

// inTerm reports whether now is within the term this replica last wrote
// to its lease, leaseMargin before its end.
func (s *Scheduler) inTerm(now time.Time) bool {
	return s.termLeft(now) > 0
}

// termLeft is how long this replica may still schedule from now.
func (s *Scheduler) termLeft(now time.Time) time.Duration {
	return time.Duration(s.leaseUntil.Load()-now.UnixNano()) - leaseMargin
}

// Ticks is how many times the scheduler stepped the rollouts.
func (s *Scheduler) Ticks() uint64 { return s.ticks.Load() }

func (s *Scheduler) loop() {
	defer s.done.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastLease, lastRefresh, lastLost time.Time
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		now := s.cfg.Now()
		if now.Sub(lastLease) >= renewEvery {
			lastLease = now
			s.renewLease(ctx, now)
		}
		if s.Leader() {
			// What a step writes and queues, it does within the term:
			// one held up past it (a NATS failover) is cut; what it did
			// not write is written at the next tick if this replica
			// renewed its term meanwhile, else read again.
			sctx, scancel := context.WithTimeout(ctx, min(s.termLeft(s.cfg.Now()), stepBudget))
			s.step(sctx)
			if now.Sub(lastLost) >= lostAfter/8 {
				lastLost = now
				s.requeueLost(sctx, now)
			}
			scancel()
			s.ticks.Add(1)
		} else if s.changed.Load() && now.Sub(lastRefresh) >= followerRefresh {
			lastRefresh = now
			s.changed.Store(false)
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			err := s.reload(rctx)
			rcancel()
			if err != nil {
				s.log.Warn("rollout view not refreshed", "err", err)
			}
		}
		cancel()
	}
}

// renewLease takes or renews the scheduler lease at now (the loop's
// tick), stepping down or taking over as the answer says.
func (s *Scheduler) renewLease(ctx context.Context, now time.Time) {
	if s.leader.Load() && !s.inTerm(now) {
		// Its loop was held up past its term: another replica may have
		// taken the lease and written since, even if this one takes it
		// again now, so what it holds is read again.
		s.stepDown("its term ended unrenewed")
	}
	if !s.leader.Load() && now.Before(s.standBy) {
		return // its last takeover failed: another replica's turn
	}
	held, err := s.acquire(ctx, now)
	if err != nil {
		// The store could not be asked (NATS electing a leader). No other
		// replica can take the lease before the term this one last wrote
		// ends, so a leader keeps scheduling until then (Leader), instead
		// of stepping down and taking over again (a reload) a moment later.
		s.log.Warn("scheduler lease not renewed", "err", err, "still leading", s.leader.Load() && s.inTerm(now), "for", s.termLeft(now).Round(time.Millisecond))
		return
	}
	switch {
	case held && !s.leader.Load():
		s.takeOver(ctx, now)
	case !held && s.leader.Load():
		s.stepDown("another replica holds the scheduler lease")
	}
}

// acquire takes or renews the lease for a term from now, bounded so that
// a renewal that lands has not outlived the term it writes.
func (s *Scheduler) acquire(ctx context.Context, now time.Time) (bool, error) {
	actx, cancel := context.WithTimeout(ctx, LeaseTTL/2)
	defer cancel()
	held, err := s.cfg.Store.Acquire(actx, leaseName, s.cfg.ID, s.cfg.APIURL, now, LeaseTTL)
	if err == nil && held {
		s.leaseUntil.Store(now.Add(LeaseTTL).UnixNano())
	}
	return held, err
}

// takeOver starts scheduling from what the last leader wrote, having
// taken the lease at now. Reading it can outlast the term just taken (a
// listing through a NATS failover took over 5 s): another replica may
// have taken the lease meanwhile and be scheduling, so the lease is
// taken again after the read, and only a replica still holding it leads.
// (Before, two replicas scheduled at once after a failover, each from
// its own view, and a rollout ended with a gateway's stored state older
// than its own: TestScaleOut, TestTakeOverOutlastingItsTerm.)
func (s *Scheduler) takeOver(ctx context.Context, now time.Time) {
	if err := s.reload(ctx); err != nil {
		// Given up, not kept: a replica holding the lease without
		// scheduling would stop every rollout (its watch of the store
		// stalled after a NATS node's loss, seen for minutes).
		s.log.Error("rollouts not reloaded; not scheduling, lease released for another replica", "err", err)
		s.giveUp(ctx, now)
		return
	}
	if read := s.cfg.Now(); !s.inTerm(read) {
		held, err := s.acquire(ctx, read)
		if err != nil || !held {
			s.log.Warn("scheduler lease taken, but reading the rollouts outlasted its term; not scheduling", "took", read.Sub(now).Round(time.Millisecond),
				"held by another replica", err == nil, "err", err)
			if err != nil {
				s.giveUp(ctx, now)
			}
			return
		}
	}
	s.log.Info("scheduling rollouts (lease taken)", "replica", s.cfg.ID)
	// A leader first: queue (through requeue) queues nothing for a
	// replica that is not one, and dropped the dispatches the last leader
	// stored but did not queue (TestTakeOverQueuesUnsent).
	s.leader.Store(true)
	s.requeue(ctx)
	if s.cfg.OnLead != nil {
		s.cfg.OnLead()
	}
}

// standByFor is how long a replica that gave up a takeover leaves the
// lease to the others before it tries again (they look every renewEvery).
const standByFor = 6 * time.Second

// giveUp releases a lease taken at now that this replica will not use,
// and stands by for a while: another replica's turn.
func (s *Scheduler) giveUp(ctx context.Context, now time.Time) {
	s.standBy = now.Add(standByFor)
	s.leaseUntil.Store(0)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.cfg.Store.Release(rctx, leaseName, s.cfg.ID); err != nil {
		s.log.Warn("scheduler lease not released; it lapses", "err", err)
	}
}

// Release gives the lease up when this replica holds it, so that another
// takes the rollouts over at once instead of when its term lapses
// (LeaseTTL). A replica that stops calls it after Close and its last
// write of the rollouts (Controller.Close); it schedules no more.
func (s *Scheduler) Release(ctx context.Context) {
	if !s.leader.Swap(false) {
		return
	}
	s.leaseUntil.Store(0)
	if err := s.cfg.Store.Release(ctx, leaseName, s.cfg.ID); err != nil {
		s.log.Warn("scheduler lease not released; it lapses", "err", err)
	}
}

// stepDown stops scheduling: the view becomes a follower's, read again
// from the store (what the next leader writes), and what this replica
// had not queued is the next leader's to queue (requeue).
func (s *Scheduler) stepDown(why string) {
	s.leader.Store(false)
	s.unqueued = nil
	s.changed.Store(true)
	s.log.Warn("not scheduling rollouts any more: "+why, "replica", s.cfg.ID)
}

// view is what Step reads: the fleet and the last specs.
type view struct {
	Fleet
	specs *Specs
}

func (v view) LastSpec(tenant, gw, name string) json.RawMessage {
	return v.specs.Last(tenant, gw, name)
}

// step steps every active rollout and queues what they dispatch.
func (s *Scheduler) step(ctx context.Context) {
	now := s.cfg.Now()
	v := view{Fleet: s.cfg.Fleet, specs: s.specs}
	var out []Dispatch
	var chs []changes.Change
	s.mu.Lock()
	for _, run := range s.runs {
		if run.active() {
			out = append(out, Step(run, v, s.cfg.Commands, now)...)
			chs = append(chs, run.TakeChanges()...)
		}
	}
	s.mu.Unlock()
	for _, c := range chs {
		s.hub.Publish(c)
	}
	s.queue(ctx, out, "")
}

// queued is a dispatch and the id of its work item, which the work queue
// does not take twice within 10 minutes.
type queued struct {
	Dispatch
	id string
}

// queue writes the rollouts and then queues out, with what earlier steps
// could not queue: workers check each item against the store (Resolve),
// so what was dispatched is written first. What cannot be written or
// queued now (NATS electing a leader after a node's loss) is tried again
// at the next tick, not left to time out. A work item's id is its
// command's, followed by again when set (requeue).
func (s *Scheduler) queue(ctx context.Context, dispatches []Dispatch, again string) {
	out := s.unqueued
	s.unqueued = nil
	for _, d := range dispatches {
		id := d.CommandID
		if again != "" {
			id += "." + again
		}
		out = append(out, queued{Dispatch: d, id: id})
	}
	if len(out) == 0 {
		return
	}
	if err := s.Flush(ctx); err != nil {
		s.log.Warn("rollout work not queued yet: state not saved; next tick", "dispatches", len(out), "err", err)
		s.unqueued = out
		return
	}
	if !s.Leader() {
		return // its term ended: what was not queued is read again (requeue)
	}
	// At once: one at a time, a round trip to NATS each, a tick's
	// dispatches took longer than a tick under load, and a rollout then
	// ran below its rate (a tick spends at most one tick's allowance).
	items := make([]state.WorkItem, len(out))
	for i, q := range out {
		data, _ := json.Marshal(q.Dispatch)
		items[i] = state.WorkItem{ID: q.id, Data: data}
	}
	if n, err := s.cfg.Store.EnqueueMany(ctx, state.WorkSubjects, items); err != nil {
		s.log.Warn("rollout work not queued yet; next tick", "dispatches", len(out)-n, "rollout", out[n].Rollout, "gateway", out[n].Gateway, "err", err)
		s.unqueued = append(s.unqueued, out[n:]...)
	}
}

// Target is a gateway a new rollout targets.
type Target struct {
	ID     string
	Online bool
}

// Create starts a rollout of dep (spec.Deployment, validated) to targets,
// superseding an active rollout of the same deployment.
// Any replica takes it: a follower hands it to the scheduling one.
func (s *Scheduler) Create(ctx context.Context, spec Spec, dep *fleetv1.DeploymentSpec, targets []Target, warnings []string) (*Summary, error) {
	id := dispatch.NewID("r")
	if !s.Leader() {
		return s.forwardCreate(ctx, id, spec, dep, targets, warnings)
	}
	return s.create(ctx, id, spec, dep, targets, warnings)
}

// create is Create on the scheduling replica, under the rollout id the
// replica that took it chose: a create handed over again (its answer was
// lost) finds the rollout made.
func (s *Scheduler) create(ctx context.Context, id string, spec Spec, dep *fleetv1.DeploymentSpec, targets []Target, warnings []string) (*Summary, error) {
	if v, ok := s.Status(id, false); ok {
		return v, nil
	}
	now := s.cfg.Now()
	r := &Rollout{ID: id, Spec: spec, State: Running, Phase: PhaseBatches, CreatedAt: now, Batch: 1, Warnings: warnings}
	run := plan(r, dep, targets)
	var chs []changes.Change
	s.mu.Lock()
	for _, other := range s.runs {
		if other.R.Spec.Tenant == spec.Tenant && other.Spec.GetName() == dep.GetName() && other.R.State.Active() {
			other.end(Superseded, "superseded by rollout "+r.ID, now)
			chs = append(chs, other.TakeChanges()...)
		}
	}
	s.runs[r.ID] = run
	s.mu.Unlock()
	for _, c := range chs {
		s.hub.Publish(c)
	}
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	s.hub.Publish(changes.Change{Kind: "rollout.created", At: now, Tenant: spec.Tenant, Batch: r.ID, State: string(r.State),
		Message: fmt.Sprintf("%s revision %d to %d gateways", dep.GetName(), dep.GetRevision(), len(targets))})
	v, _ := s.Status(r.ID, false)
	return v, nil
}

// plan orders the targets (online ones first, so that canaries and early
// batches are ones that can answer now) and puts them in batches.
func plan(r *Rollout, dep *fleetv1.DeploymentSpec, targets []Target) *Run {
	targets = append([]Target(nil), targets...)
	sort.SliceStable(targets, func(i, j int) bool { return targets[i].Online && !targets[j].Online })
	run := NewRun(r, dep)
	st := r.Spec.Strategy
	canary := 0
	if st.Canary != nil {
		canary = min(st.Canary.Count, len(targets))
		r.Phase = PhaseCanary
	}
	if p := st.Prefetch; p != nil {
		r.Phase, r.PrefetchUntil = PhasePrefetch, r.CreatedAt.Add(p.timeout())
	}
	r.BatchSize = len(targets) - canary
	switch {
	case st.BatchSize > 0:
		r.BatchSize = st.BatchSize
	case st.BatchPercent > 0:
		r.BatchSize = max(1, int(math.Ceil(float64(len(targets))*st.BatchPercent/100)))
	}
	r.BatchSize = max(r.BatchSize, 1)
	for i, g := range targets {
		batch := 0
		if i >= canary {
			batch = 1 + (i-canary)/r.BatchSize
		}
		run.Add(g.ID, batch)
	}
	return run
}

// Pause, Resume and Cancel are the operator's controls.
func (s *Scheduler) Pause(ctx context.Context, id string) error  { return s.setState(ctx, id, Paused) }
func (s *Scheduler) Resume(ctx context.Context, id string) error { return s.setState(ctx, id, Running) }
func (s *Scheduler) Cancel(ctx context.Context, id string) error {
	return s.setState(ctx, id, Canceled)
}

func (s *Scheduler) setState(ctx context.Context, id string, st State) error {
	if !s.Leader() {
		return s.forwardState(ctx, id, st)
	}
	s.mu.Lock()
	run := s.runs[id]
	if run == nil {
		s.mu.Unlock()
		return &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: "no rollout " + id}
	}
	if !run.R.State.Active() {
		s.mu.Unlock()
		return &errdefs.FieldError{Field: "id", Kind: errdefs.ErrInvalidArgument, Msg: fmt.Sprintf("rollout %s is %s already", id, run.R.State)}
	}
	now := s.cfg.Now()
	if st == Canceled {
		run.end(Canceled, "canceled by the operator", now)
	} else {
		run.R.State, run.dirtyRun = st, true
		run.R.lastTick = now
		run.note(changes.Change{Kind: "rollout." + lower(string(st)), At: now, Tenant: run.R.Spec.Tenant, Batch: id, State: string(st)})
	}
	chs := run.TakeChanges()
	s.mu.Unlock()
	for _, c := range chs {
		s.hub.Publish(c)
	}
	// Stored before it is acknowledged: a leader that dies next loses
	// no operator's decision.
	return s.Flush(ctx)
}

// Summary is a rollout with its aggregate progress.
type Summary struct {
	Rollout
	Total  int
	Counts map[GatewayState]int
	// PrefetchCounts count the gateways' prefetches by state; nil without
	// a prefetch phase.
	PrefetchCounts map[PrefetchState]int
	SucceededPct   float64
	FailedPct      float64
	CurrentRate    float64 // gateways finished in the last minute
	ETA            string
	Failing        []Gateway
	Gateways       []Gateway
	Active         bool
}

// List lists the rollouts, newest first.
func (s *Scheduler) List() []*Summary {
	s.mu.Lock()
	ids := make([]string, 0, len(s.runs))
	for id := range s.runs {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	var out []*Summary
	for _, id := range ids {
		if v, ok := s.Status(id, false); ok {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out
}

// Status is a rollout's summary; withGateways adds every gateway's record.
// A follower whose view lacks the rollout reads the store again first if
// the store has it: one created through another replica a moment ago is
// found at once.
func (s *Scheduler) Status(id string, withGateways bool) (*Summary, bool) {
	if !s.known(id) && !s.Leader() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := s.cfg.Store.GetEntry(ctx, state.Rollouts, state.Key("r", id)); err == nil {
			if err := s.reload(ctx); err != nil {
				s.log.Warn("rollout view not refreshed", "err", err)
			}
		}
		cancel()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.runs[id]
	if run == nil {
		return nil, false
	}
	return run.summary(s.cfg.Now(), withGateways), true
}

func (s *Scheduler) known(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs[id] != nil
}

func (run *Run) summary(now time.Time, withGateways bool) *Summary {
	v := &Summary{Rollout: *run.R, Total: len(run.gws), Counts: map[GatewayState]int{}, Active: run.R.State.Active()}
	v.Warnings = append([]string(nil), run.R.Warnings...)
	finishedRecently := 0
	for _, id := range run.order {
		g := run.gws[id]
		v.Counts[g.State]++
		if g.Prefetch != nil {
			if v.PrefetchCounts == nil {
				v.PrefetchCounts = map[PrefetchState]int{}
			}
			v.PrefetchCounts[g.Prefetch.State]++
		}
		if g.State.Final() && now.Sub(g.FinishedAt) <= time.Minute {
			finishedRecently++
		}
		if (run.R.Spec.Abort.countsAsFailure(g.State) || g.State == GatewayFailed) && len(v.Failing) < 50 {
			v.Failing = append(v.Failing, g.clone())
		}
		if withGateways {
			v.Gateways = append(v.Gateways, g.clone())
		}
	}
	if v.Total > 0 {
		v.SucceededPct = 100 * float64(v.Counts[GatewaySucceeded]) / float64(v.Total)
		v.FailedPct = 100 * float64(v.Counts[GatewayFailed]+v.Counts[GatewayRejected]+v.Counts[GatewayTimedOut]) / float64(v.Total)
	}
	v.CurrentRate = float64(finishedRecently)
	left := v.Counts[GatewayQueued] + v.Counts[GatewayInProgress]
	if v.Active && left > 0 && finishedRecently > 0 {
		v.ETA = (time.Duration(float64(left)/float64(finishedRecently)*60) * time.Second).String()
	}
	return v
}

// clone copies g, its prefetch too: a summary is read outside the lock.
func (g *Gateway) clone() Gateway {
	c := *g
	if g.Prefetch != nil {
		p := *g.Prefetch
		c.Prefetch = &p
	}
	return c
}
