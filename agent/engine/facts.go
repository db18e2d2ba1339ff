package engine

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Facts keeps what the birth certificate says of the engine (name,
// version, API version, reachability), so that a birth costs no engine
// round trip: a Docker Engine takes milliseconds to answer its version
// (12-18 ms on the benchmark host), and every birth and every rebirth
// command asked for it.
//
// Facts are asked for once by Update (at start), again on Refresh (the
// gateway's reconnects, and each time the engine's event stream is
// (re)subscribed: the engine may have been restarted or upgraded), and are
// marked unreachable at once by Lost (the event stream failed). Run serves
// the refreshes in the background; Get never waits for the engine.
type Facts struct {
	query   func(context.Context) *fleetv1.Engine
	timeout time.Duration
	kick    chan struct{} // a refresh is wanted; buffered, so requests coalesce

	mu  sync.Mutex
	cur *fleetv1.Engine // guarded by mu; never modified once stored
	gen uint64          // guarded by mu; bumped by every store and by Lost
}

// NewFacts returns facts that query asks for (Docker.Info). Until Update
// or Run has asked once, Get reports the engine as not yet asked.
func NewFacts(query func(context.Context) *fleetv1.Engine) *Facts {
	return &Facts{
		query:   query,
		timeout: 2 * time.Second,
		kick:    make(chan struct{}, 1),
		cur:     &fleetv1.Engine{Error: "the engine has not been asked yet"},
	}
}

// Get returns the latest facts without asking the engine. It has the
// signature of gateway.Config.EngineInfo; ctx is not used.
func (f *Facts) Get(context.Context) *fleetv1.Engine {
	f.mu.Lock()
	defer f.mu.Unlock()
	return proto.Clone(f.cur).(*fleetv1.Engine)
}

// Update asks the engine now, at most 2 s, and stores the answer unless
// Lost was called meanwhile (the answer may predate the loss).
func (f *Facts) Update(ctx context.Context) {
	f.mu.Lock()
	gen := f.gen
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	e := f.query(ctx)
	cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == gen {
		f.cur = e
		f.gen++
	}
}

// Refresh asks Run to update the facts, without waiting.
func (f *Facts) Refresh() {
	select {
	case f.kick <- struct{}{}:
	default: // one is pending already
	}
}

// Lost records that the connection to the engine failed with err: the
// facts say unreachable at once (so a birth right after says so), and a
// refresh is requested.
func (f *Facts) Lost(err error) {
	f.mu.Lock()
	e := proto.Clone(f.cur).(*fleetv1.Engine)
	e.Reachable, e.Error = false, err.Error()
	f.cur = e
	f.gen++
	f.mu.Unlock()
	f.Refresh()
}

// Run updates the facts on each Refresh until ctx ends.
func (f *Facts) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
			f.Update(ctx)
		}
	}
}
