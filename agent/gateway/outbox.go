package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// outbox holds the newest status of each deployment until it is published.
// Statuses are retained messages, so only the newest matters: a rollout
// never waits for the network, and an offline gateway publishes each
// deployment's latest status once when it is back.
type outbox struct {
	mu      sync.Mutex
	pending map[string]*fleetv1.DeploymentStatus // nil value: clear
	order   []string
	wake    chan struct{}
}

func newOutbox() *outbox {
	return &outbox{pending: map[string]*fleetv1.DeploymentStatus{}, wake: make(chan struct{}, 1)}
}

func (o *outbox) put(name string, st *fleetv1.DeploymentStatus) {
	o.mu.Lock()
	if _, queued := o.pending[name]; !queued {
		o.order = append(o.order, name)
	}
	o.pending[name] = st
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run publishes queued statuses with send until ctx ends; a status whose
// send fails is queued again unless a newer one replaced it.
func (o *outbox) run(ctx context.Context, log *slog.Logger, send func(context.Context, string, *fleetv1.DeploymentStatus) error) {
	for {
		o.mu.Lock()
		var name string
		var st *fleetv1.DeploymentStatus
		ok := len(o.order) > 0
		if ok {
			name, o.order = o.order[0], o.order[1:]
			st = o.pending[name]
			delete(o.pending, name)
		}
		o.mu.Unlock()
		if !ok {
			select {
			case <-o.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if err := send(ctx, name, st); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("status not published; will retry", "deployment", name, "err", err)
			o.mu.Lock()
			if _, newer := o.pending[name]; !newer {
				o.pending[name] = st
				o.order = append(o.order, name)
			}
			o.mu.Unlock()
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return
			}
		}
	}
}
