package reconcile

import (
	"context"
	"fmt"

	"github.com/fleet-agent/fleet/internal/errdefs"
)

// op is an operation in progress on one deployment: a rollout, a verb, a
// reconcile pass's work on it.
type op struct {
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when it has finished
	prev   *op           // the operation it replaced; waited for before it runs
}

// errSuperseded is the cause of a rollout canceled by a newer command.
var errSuperseded = fmt.Errorf("%w: a newer command for this deployment replaced this one", errdefs.ErrSuperseded)

// errShutdown refuses operations once Shutdown has begun; the command
// resumes on the next start.
var errShutdown = fmt.Errorf("the agent is shutting down: %w", context.Canceled)

// begin makes a new operation the deployment's current one in one step
// under r.mu: the one in progress, if any, is canceled as superseded and
// becomes the new one's prev. With ifIdle, nothing begins while another
// operation is in progress. ok is false when nothing began (also after
// Shutdown). Every begun operation must be ended by exec.
func (r *Reconciler) begin(parent context.Context, name string, ifIdle bool) (o *op, ctx context.Context, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || ifIdle && r.ops[name] != nil {
		return nil, nil, false
	}
	ctx, cancel := context.WithCancelCause(parent)
	o = &op{cancel: cancel, done: make(chan struct{}), prev: r.ops[name]}
	if o.prev != nil {
		o.prev.cancel(errSuperseded)
	}
	r.ops[name] = o
	r.running.Add(1)
	return o, ctx, true
}

// exec waits for the operation o replaced, runs f as o, and ends o. An
// error of a canceled operation is its cause (superseded, or shut down).
func (r *Reconciler) exec(ctx context.Context, name string, o *op, f func(ctx context.Context) error) (err error) {
	defer func() {
		o.cancel(nil)
		r.mu.Lock()
		if r.ops[name] == o {
			delete(r.ops, name)
		}
		r.mu.Unlock()
		close(o.done)
		r.running.Done()
	}()
	if o.prev != nil {
		<-o.prev.done
		o.prev = nil
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	err = f(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil {
		// Superseded, or canceled by shutdown (the command then resumes
		// on the next start): say so rather than how the engine failed.
		err = cause
	}
	return err
}

// run runs f as the deployment's operation, in the caller's goroutine,
// after the one it replaces has stopped.
func (r *Reconciler) run(ctx context.Context, name string, f func(ctx context.Context) error) error {
	o, octx, ok := r.begin(ctx, name, false)
	if !ok {
		return errShutdown
	}
	return r.exec(octx, name, o, f)
}

// goIfIdle runs f in the background as the deployment's operation, unless
// one is in progress (or Shutdown has begun); done receives f's outcome.
func (r *Reconciler) goIfIdle(name string, f func(ctx context.Context) error, done func(error)) {
	o, octx, ok := r.begin(context.Background(), name, true)
	if !ok {
		return
	}
	go func() { done(r.exec(octx, name, o, f)) }()
}

func (r *Reconciler) opIdle(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ops[name] == nil
}

// Shutdown cancels every operation in progress and waits for all of them,
// including those they replaced; their commands stay unfinished and resume
// on the next start. No operation begins afterwards.
func (r *Reconciler) Shutdown() {
	r.mu.Lock()
	r.closed = true
	for _, o := range r.ops {
		o.cancel(context.Canceled)
	}
	r.mu.Unlock()
	r.running.Wait()
}
