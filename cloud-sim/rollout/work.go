package rollout

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Work is a queued Dispatch resolved against the store: what a worker
// sends, every field but the ids taken from the stored rollout.
type Work struct {
	Rollout   string
	Tenant    string
	Gateway   string
	CommandID string
	Spec      *fleetv1.DeploymentSpec
	// Prefetch: send a prefetch of Spec, not a deploy.
	Prefetch bool
}

// Resolver checks work items against the rollouts the store holds. It
// keeps each rollout's tenant and deployment, which are fixed when the
// rollout is created, so that an item costs one read: its gateway's
// record (which exists only under a stored rollout).
type Resolver struct {
	st    *state.Store
	mu    sync.Mutex
	fixed map[string]state.RolloutSpec // by rollout id
}

// maxFixed bounds the rollouts a Resolver keeps; beyond it, it starts over.
const maxFixed = 256

// NewResolver returns a Resolver reading st.
func NewResolver(st *state.Store) *Resolver {
	return &Resolver{st: st, fixed: map[string]state.RolloutSpec{}}
}

// Resolve checks a work item and returns what to send. Anyone who can
// publish on the work queue can queue an item, so it is only a pointer:
// the rollout must be stored, the gateway one of its stored gateways, and
// the command id the one the scheduler dispatched to it (its prefetch,
// its deploy, or the rollback the abort decided); the tenant and the spec come from the
// stored rollout (a rollback's from the gateway's stored previous spec).
// Anything else is a FieldError of kind errdefs.ErrPermissionDenied naming
// the field; a store that cannot be read is another error.
//
// The scheduler writes what it dispatches before queuing it (see step),
// so a genuine item always finds its records.
func (rs *Resolver) Resolve(ctx context.Context, d Dispatch) (Work, error) {
	refuse := func(field, format string, args ...any) (Work, error) {
		return Work{}, &errdefs.FieldError{Field: field, Kind: errdefs.ErrPermissionDenied, Msg: fmt.Sprintf(format, args...)}
	}
	if d.Rollout == "" || d.Gateway == "" || d.CommandID == "" {
		return refuse("rollout", "a work item names a rollout, a gateway and a command id")
	}
	var g state.RolloutGateway
	gerr := rs.st.Get(ctx, state.Rollouts, state.Key("g", d.Rollout, d.Gateway), &g)
	if gerr != nil && !errors.Is(gerr, state.ErrNotFound) {
		return Work{}, gerr
	}
	spec, err := rs.spec(ctx, d.Rollout, gerr != nil)
	if errors.Is(err, state.ErrNotFound) {
		return refuse("rollout", "no rollout %s in the store", d.Rollout)
	} else if err != nil {
		return Work{}, err
	}
	if gerr != nil {
		return refuse("gateway", "gateway %s is not one of rollout %s's targets (tenant %s)", d.Gateway, d.Rollout, spec.Tenant)
	}
	w := Work{Rollout: d.Rollout, Tenant: spec.Tenant, Gateway: d.Gateway, CommandID: d.CommandID, Spec: new(fleetv1.DeploymentSpec)}
	switch {
	case g.Prefetch != nil && g.Prefetch.CommandID != "" && d.CommandID == g.Prefetch.CommandID:
		if err := protojson.Unmarshal(spec.Deployment, w.Spec); err != nil {
			return Work{}, fmt.Errorf("rollout %s: stored deployment: %w", d.Rollout, err)
		}
		w.Prefetch = true
	case g.RollbackRevision == 0 && d.CommandID == g.CommandID:
		if err := protojson.Unmarshal(spec.Deployment, w.Spec); err != nil {
			return Work{}, fmt.Errorf("rollout %s: stored deployment: %w", d.Rollout, err)
		}
	case g.RollbackRevision != 0 && g.PrevSpec != nil && d.CommandID == CommandID(d.Rollout, d.Gateway, g.Attempt, "rollback"):
		if err := protojson.Unmarshal(g.PrevSpec, w.Spec); err != nil {
			return Work{}, fmt.Errorf("rollout %s: gateway %s: stored previous spec: %w", d.Rollout, d.Gateway, err)
		}
		w.Spec.Revision = g.RollbackRevision
	default:
		return refuse("commandId", "command %s is not what rollout %s dispatched to gateway %s (it is %s there)", d.CommandID, d.Rollout, d.Gateway, describe(g))
	}
	return w, nil
}

// spec returns the stored rollout's spec, kept from an earlier read unless
// fresh is set (the gateway was not found: the rollout may be gone too).
func (rs *Resolver) spec(ctx context.Context, id string, fresh bool) (state.RolloutSpec, error) {
	rs.mu.Lock()
	spec, ok := rs.fixed[id]
	rs.mu.Unlock()
	if ok && !fresh {
		return spec, nil
	}
	var r state.Rollout
	if err := rs.st.Get(ctx, state.Rollouts, state.Key("r", id), &r); err != nil {
		return state.RolloutSpec{}, err
	}
	rs.mu.Lock()
	if len(rs.fixed) >= maxFixed {
		clear(rs.fixed)
	}
	rs.fixed[id] = r.Spec
	rs.mu.Unlock()
	return r.Spec, nil
}

func describe(g state.RolloutGateway) string {
	switch {
	case g.CommandID == "":
		return g.State + ", not dispatched"
	case g.RollbackRevision != 0:
		return fmt.Sprintf("%s, rollback to revision %d", g.State, g.RollbackRevision)
	default:
		return fmt.Sprintf("%s under command %s", g.State, g.CommandID)
	}
}
