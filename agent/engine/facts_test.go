package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/fleet-agent/fleet/agent/engine"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// fakeEngine answers the facts query; while gated, each query waits for a
// release.
type fakeEngine struct {
	mu      sync.Mutex
	version string // guarded by mu
	calls   int    // guarded by mu

	gate chan struct{} // nil: answer at once
}

func (e *fakeEngine) info(ctx context.Context) *fleetv1.Engine {
	if e.gate != nil {
		select {
		case <-e.gate:
		case <-ctx.Done():
			return &fleetv1.Engine{Name: "fake", Error: ctx.Err().Error()}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	return &fleetv1.Engine{Name: "fake", Version: e.version, Reachable: true}
}

func (e *fakeEngine) set(version string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.version = version
}

func (e *fakeEngine) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls
}

// runFacts starts f.Run until the end of the (synctest) test.
func runFacts(t *testing.T, f *engine.Facts) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestFactsGetCostsNoQuery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEngine{version: "1"}
		f := engine.NewFacts(fe.info)
		runFacts(t, f)
		if e := f.Get(t.Context()); e.GetReachable() || e.GetError() == "" {
			t.Errorf("before any query: Get = %v, want not reachable with an error saying so", e)
		}
		f.Update(t.Context())
		for range 100 {
			if e := f.Get(t.Context()); !e.GetReachable() || e.GetVersion() != "1" {
				t.Fatalf("Get = %v, want reachable version 1", e)
			}
		}
		synctest.Wait()
		if got := fe.count(); got != 1 {
			t.Errorf("engine queries after Update and 100 Gets = %d, want 1", got)
		}
		// A caller changing what Get returned does not change the cache.
		f.Get(t.Context()).Version = "changed"
		if got := f.Get(t.Context()).GetVersion(); got != "1" {
			t.Errorf("Get after a caller modified a result: version %q, want 1", got)
		}
	})
}

func TestFactsRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEngine{version: "1"}
		f := engine.NewFacts(fe.info)
		runFacts(t, f)
		f.Update(t.Context())
		fe.set("2") // the engine was upgraded
		synctest.Wait()
		if got := f.Get(t.Context()).GetVersion(); got != "1" {
			t.Errorf("before Refresh: version %q, want the cached 1", got)
		}
		f.Refresh()
		synctest.Wait()
		if got := f.Get(t.Context()).GetVersion(); got != "2" {
			t.Errorf("after Refresh: version %q, want 2", got)
		}
		if got := fe.count(); got != 2 {
			t.Errorf("engine queries = %d, want 2 (Update, Refresh)", got)
		}
	})
}

func TestFactsRefreshesCoalesce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEngine{version: "1", gate: make(chan struct{})}
		f := engine.NewFacts(fe.info)
		runFacts(t, f)
		f.Refresh()
		synctest.Wait() // Run is in the query
		for range 5 {
			f.Refresh() // while one is in flight
		}
		fe.gate <- struct{}{}
		synctest.Wait()
		fe.gate <- struct{}{} // the one pending refresh
		synctest.Wait()
		if got := fe.count(); got != 2 {
			t.Errorf("engine queries = %d, want 2: one in flight, the 5 requests meanwhile as one", got)
		}
	})
}

func TestFactsLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEngine{version: "1", gate: make(chan struct{})}
		f := engine.NewFacts(fe.info)
		runFacts(t, f)
		// An answer is under way when the connection to the engine fails.
		f.Refresh()
		synctest.Wait()
		f.Lost(errors.New("runtime unavailable: connection refused"))
		e := f.Get(t.Context())
		if e.GetReachable() || e.GetError() != "runtime unavailable: connection refused" {
			t.Errorf("right after Lost: Get = %v, want unreachable with the error", e)
		}
		fe.gate <- struct{}{} // the answer begun before the loss arrives
		synctest.Wait()
		if e := f.Get(t.Context()); e.GetReachable() {
			t.Errorf("an answer begun before the loss overwrote it: Get = %v", e)
		}
		fe.gate <- struct{}{} // the refresh Lost asked for: the engine is back
		synctest.Wait()
		if e := f.Get(t.Context()); !e.GetReachable() || e.GetError() != "" {
			t.Errorf("after the refresh that Lost asked for: Get = %v, want reachable", e)
		}
	})
}

func TestFactsConcurrentReaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEngine{version: "0"}
		f := engine.NewFacts(fe.info)
		runFacts(t, f)
		f.Update(t.Context())
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 200 {
					e := f.Get(t.Context())
					if e.GetReachable() == (e.GetError() != "") {
						t.Errorf("Get = %v: reachable and error disagree", e)
						return
					}
				}
			})
		}
		for i := range 50 {
			fe.set(fmt.Sprint(i))
			if i%10 == 0 {
				f.Lost(errors.New("lost"))
			}
			f.Refresh()
		}
		wg.Wait()
		synctest.Wait()
		f.Refresh()
		synctest.Wait()
		if e := f.Get(t.Context()); !e.GetReachable() || e.GetVersion() != "49" {
			t.Errorf("after the last refresh: Get = %v, want reachable version 49", e)
		}
	})
}

// An engine that does not answer is reported as such, with the reason.
func TestFactsUnreachableDocker(t *testing.T) {
	d, err := engine.NewDocker("unix:///nonexistent/docker.sock", "test/unreachable", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Facts().Update(t.Context())
	e := d.Facts().Get(t.Context())
	if e.GetName() != "docker" || e.GetReachable() || e.GetError() == "" {
		t.Errorf("facts of an absent engine = %v, want docker, unreachable, with the error", e)
	}

	// The event stream failing marks the facts unreachable before the
	// failure is passed on (the reconciler's statuses then agree with the
	// next birth).
	d2, err := engine.NewDocker("unix:///nonexistent/docker.sock", "test/unreachable", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, errs := d2.Events(ctx)
	if err := <-errs; err == nil {
		t.Fatal("Events on an absent engine: no error")
	}
	if e := d2.Facts().Get(t.Context()); e.GetReachable() || e.GetError() == "" || e.GetError() == "the engine has not been asked yet" {
		t.Errorf("facts once the event stream failed = %v, want unreachable with the stream's error", e)
	}
}
