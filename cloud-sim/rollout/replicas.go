package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Rollouts across replicas. Only the replica holding the lease schedules;
// any replica takes an operator's change: a follower hands it to the
// scheduling replica over NATS and answers once it is stored there. The
// followers' views follow the store through a watch.

// ErrNoScheduler is returned for a change no scheduling replica took.
var ErrNoScheduler = errors.New("no replica schedules rollouts now")

// changeSubject is where followers hand rollout changes to the leader.
const changeSubject = "fleet.rollout.changes"

// followerRefresh bounds how often a follower reads the rollouts again
// after a change.
const followerRefresh = 250 * time.Millisecond

// handOver bounds how long a follower tries to reach a scheduling replica:
// through a lease changing hands (a dead leader's lapses within LeaseTTL).
const handOver = LeaseTTL + 2*time.Second

type changeRequest struct {
	Op         string             `json:"op"` // create, or a State to set
	ID         string             `json:"id"`
	Spec       *state.RolloutSpec `json:"spec,omitempty"`
	Deployment json.RawMessage    `json:"deployment,omitempty"`
	Targets    []Target           `json:"targets,omitempty"`
	Warnings   []string           `json:"warnings,omitempty"`
}

type changeReply struct {
	// Code is the protocol code of the error (empty on success); Field
	// and Message describe it.
	Code    string `json:"code,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message,omitempty"`
}

// serveChanges answers the changes followers hand over while this replica
// schedules; the watch marks the view changed for a follower.
func (s *Scheduler) serveChanges(ctx context.Context) error {
	stopServe, err := s.cfg.Store.Serve(changeSubject, s.serveChange)
	if err != nil {
		return err
	}
	s.stops = append(s.stops, stopServe)
	stopWatch, err := s.cfg.Store.Watch(context.WithoutCancel(ctx), state.Rollouts, s.noteWatched)
	if err != nil {
		return err
	}
	s.stops = append(s.stops, stopWatch)
	return nil
}

// serveChange applies one handed-over change on the scheduling replica;
// the others stay silent (nil).
func (s *Scheduler) serveChange(data []byte) []byte {
	if !s.Leader() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var req changeRequest
	err := json.Unmarshal(data, &req)
	if err == nil {
		err = s.applyChange(ctx, req)
	}
	var rep changeReply
	if err != nil {
		rep.Code, rep.Message = errdefs.Code(err).String(), err.Error()
		var fe *errdefs.FieldError
		if errors.As(err, &fe) {
			rep.Field, rep.Message = fe.Field, fe.Msg
		}
	}
	out, _ := json.Marshal(rep)
	return out
}

func (s *Scheduler) applyChange(ctx context.Context, req changeRequest) error {
	if req.Op != "create" {
		return s.setState(ctx, req.ID, State(req.Op))
	}
	if req.Spec == nil {
		return &errdefs.FieldError{Field: "spec", Kind: errdefs.ErrInvalidArgument, Msg: "missing"}
	}
	dep := new(fleetv1.DeploymentSpec)
	if err := protojson.Unmarshal(req.Deployment, dep); err != nil {
		return &errdefs.FieldError{Field: "deployment", Kind: errdefs.ErrInvalidArgument, Msg: err.Error()}
	}
	_, err := s.create(ctx, req.ID, restoreSpec(*req.Spec), dep, req.Targets, req.Warnings)
	return err
}

// forwardCreate hands a create to the scheduling replica and returns the
// rollout once this replica's view holds it.
func (s *Scheduler) forwardCreate(ctx context.Context, id string, spec Spec, dep *fleetv1.DeploymentSpec, targets []Target, warnings []string) (*Summary, error) {
	raw, err := protojson.Marshal(dep)
	if err != nil {
		return nil, err
	}
	stored := spec.stored()
	req := changeRequest{Op: "create", ID: id, Spec: &stored, Deployment: raw, Targets: targets, Warnings: warnings}
	if err := s.forward(ctx, req); err != nil {
		return nil, err
	}
	return s.awaitView(ctx, id)
}

// forwardState hands a pause, resume or cancel to the scheduling replica.
func (s *Scheduler) forwardState(ctx context.Context, id string, st State) error {
	return s.forward(ctx, changeRequest{Op: string(st), ID: id})
}

// forward sends req to the scheduling replica, again while none answers
// (the lease is changing hands) for handOver at most; a replica that
// takes the lease meanwhile applies it itself.
func (s *Scheduler) forward(ctx context.Context, req changeRequest) error {
	ctx, cancel := context.WithTimeout(ctx, handOver)
	defer cancel()
	data, _ := json.Marshal(req)
	for {
		if s.Leader() {
			return s.applyChange(ctx, req)
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		out, err := s.cfg.Store.Request(rctx, changeSubject, data)
		rcancel()
		if err == nil {
			var rep changeReply
			if err := json.Unmarshal(out, &rep); err != nil {
				return fmt.Errorf("rollout: the scheduling replica's answer: %w", err)
			}
			if rep.Code == "" {
				return nil
			}
			kind := errdefs.Kind(fleetv1.Reply_Code(fleetv1.Reply_Code_value[rep.Code]))
			return &errdefs.FieldError{Field: rep.Field, Kind: kind, Msg: rep.Message}
		}
		if !errors.Is(err, state.ErrNoResponder) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (this one, %s, follows; the lease is changing hands or every other replica is down): try again", ErrNoScheduler, s.cfg.ID)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// awaitView waits until this follower's view holds rollout id, reading
// the store at once if the watch is late.
func (s *Scheduler) awaitView(ctx context.Context, id string) (*Summary, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if v, ok := s.Status(id, false); ok {
			return v, nil
		}
		select {
		case <-ctx.Done():
			if err := s.reload(context.WithoutCancel(ctx)); err != nil {
				return nil, err
			}
			if v, ok := s.Status(id, false); ok {
				return v, nil
			}
			return nil, fmt.Errorf("rollout %s was created, but is not readable here yet: %w", id, ctx.Err())
		case <-t.C:
		}
	}
}

// requeue queues again, on taking the lease, every dispatch of an active
// rollout that no replica has sent: the last leader may have stored it
// and died before queueing it, or queued it and its item was lost with
// the replica or the NATS server that held it. Each is queued under a new
// work item id, which the work queue does not take for the first: under
// the command's own id, it dropped them as duplicates, and after the
// scheduling replica's and a NATS node's kill 11 gateways of TestScaleOut
// were never sent their deploy (TestRequeueIsNotDropped). A worker skips
// a command its gateway answered or whose revision it reports, and a
// gateway answers a command id it had from its journal, so a dispatch
// sent twice is run once.
func (s *Scheduler) requeue(ctx context.Context) {
	out := s.unsent(func(string, time.Time) bool { return true })
	if len(out) > 0 {
		s.log.Info("queuing again the dispatches no replica had sent", "count", len(out))
	}
	s.noteRequeued(out, s.cfg.Now())
	s.queue(ctx, out, s.againID())
}

// noteRequeued records when out was queued again (requeueLost).
func (s *Scheduler) noteRequeued(out []Dispatch, now time.Time) {
	if len(out) > 0 && s.requeued == nil {
		s.requeued = map[string]time.Time{}
	}
	for _, d := range out {
		s.requeued[d.CommandID] = now
	}
}

// lostAfter is how long a dispatch may stay unsent (no replica recorded
// its command) before the scheduling replica queues it again. A work
// item can be lost without a word: after a NATS node's loss, items that
// the work queue acknowledged were never handed to a worker (TestScaleOut,
// beside two busy loops: 2 gateways never sent their deploy, queued again
// three times). It is longer than the work queue's ack wait (a minute),
// after which an item a dead worker held comes back by itself.
const lostAfter = 75 * time.Second

// requeueLost queues again, under new work item ids, the dispatches
// that stayed unsent for lostAfter since they were dispatched or last
// queued again (TestRequeueLost).
func (s *Scheduler) requeueLost(ctx context.Context, now time.Time) {
	still := map[string]bool{}
	out := s.unsent(func(cmd string, dispatched time.Time) bool {
		still[cmd] = true
		if t, ok := s.requeued[cmd]; ok && t.After(dispatched) {
			dispatched = t
		}
		return now.Sub(dispatched) > lostAfter
	})
	for cmd := range s.requeued { // sent since, or its rollout ended
		if !still[cmd] {
			delete(s.requeued, cmd)
		}
	}
	if len(out) == 0 {
		return
	}
	s.noteRequeued(out, now)
	s.log.Warn("dispatches not sent after "+lostAfter.String()+": queued again", "count", len(out), "rollout", out[0].Rollout, "gateway", out[0].Gateway)
	s.queue(ctx, out, s.againID())
}

// againID makes the work items of a requeue distinct from the earlier
// items of their commands: this replica, the time, and a count.
func (s *Scheduler) againID() string {
	return s.cfg.ID + "-" + strconv.FormatInt(s.cfg.Now().UnixNano(), 36) + "-" + strconv.FormatUint(s.requeues.Add(1), 36)
}

// unsent lists the dispatches of active rollouts that no replica has
// sent (no replica recorded their command), those pick takes, given the
// command and when it was dispatched.
func (s *Scheduler) unsent(pick func(cmd string, dispatched time.Time) bool) []Dispatch {
	var out []Dispatch
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, run := range s.runs {
		if !run.R.State.Active() {
			continue
		}
		for _, id := range run.order {
			g := run.gws[id]
			cmd, at := "", g.DispatchedAt
			switch {
			case g.Prefetch != nil && g.Prefetch.State == PrefetchInProgress:
				cmd, at = g.Prefetch.CommandID, g.Prefetch.DispatchedAt
			case g.State == GatewayInProgress:
				cmd = g.CommandID
			case g.State == GatewayRollingBack:
				cmd = CommandID(run.R.ID, id, g.Attempt, "rollback")
			}
			if cmd == "" {
				continue
			}
			if _, _, _, known := s.cfg.Commands.Outcome(cmd); !known && pick(cmd, at) {
				out = append(out, Dispatch{Rollout: run.R.ID, Gateway: id, CommandID: cmd})
			}
		}
	}
	return out
}
