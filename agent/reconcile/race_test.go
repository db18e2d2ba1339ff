package reconcile_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/agent/store"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestDeployRacingReconcileAll: a deploy of a new revision while a
// reconcile pass (agent start, engine back) finds the deployment's
// container missing. Whatever the interleaving, exactly one container runs
// in the end, at the deployed revision, and Shutdown waits for every
// operation it started: nothing touches the engine after it returns.
func TestDeployRacingReconcileAll(t *testing.T) {
	for i := range 200 {
		synctest.Test(t, func(t *testing.T) { deployRacingReconcile(t, i%3) })
		if t.Failed() {
			t.Fatalf("failed in round %d", i)
		}
	}
}

// listHook lets a test hold a reconcile pass inside its engine listing.
type listHook struct {
	*engine.Fake
	mu     sync.Mutex
	onList func()
}

func (e *listHook) List(ctx context.Context) ([]engine.Container, error) {
	e.mu.Lock()
	f := e.onList
	e.onList = nil
	e.mu.Unlock()
	if f != nil {
		f()
	}
	return e.Fake.List(ctx)
}

// deployRacingReconcile runs one round. order 0 and 1 start the deploy and
// the pass at once, in either order; order 2 holds the pass in its engine
// listing until the deploy has finished.
func deployRacingReconcile(t *testing.T, order int) {
	st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fake := engine.NewFake("t/g")
	eng := &listHook{Fake: fake}
	rec, err := reconcile.New(reconcile.Config{Engine: eng, Store: st, PollInterval: 5 * time.Millisecond,
		Publish: func(context.Context, string, *fleetv1.DeploymentStatus) {}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	fake.Publish("registry.test/web:1", "1")
	fake.Publish("registry.test/web:2", "2")
	v1 := &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"}
	v2 := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.test/web:2"}
	if _, err := rec.Apply(ctx, v1, nil); err != nil {
		t.Fatalf("deploy r1 = %v", err)
	}
	cs, _ := fake.List(ctx)
	for _, c := range cs { // deleted behind the agent's back: the pass rolls it out again
		fake.Remove(ctx, c.ID)
	}
	fake.PullDelay = time.Second

	passed, deployed := make(chan error, 1), make(chan error, 1)
	pass := func() { passed <- rec.ReconcileAll(ctx) }
	deploy := func() {
		_, err := rec.Apply(ctx, v2, nil)
		deployed <- err
	}
	var err2 error
	switch order {
	case 0:
		go pass()
		go deploy()
	case 1:
		go deploy()
		go pass()
	case 2:
		listing, release := make(chan struct{}), make(chan struct{})
		eng.mu.Lock()
		eng.onList = func() { close(listing); <-release }
		eng.mu.Unlock()
		go pass()
		<-listing
		go deploy()
		err2 = <-deployed
		deployed <- err2
		close(release)
	}
	if err := <-passed; err != nil {
		t.Fatalf("ReconcileAll = %v", err)
	}
	if err2 = <-deployed; err2 != nil {
		t.Errorf("deploy r2 = %v, want success", err2)
	}
	time.Sleep(time.Hour) // fake time: every rollout is over
	cs, _ = fake.List(ctx)
	if len(cs) != 1 || cs[0].Revision != 2 || !cs[0].Running {
		t.Errorf("containers = %+v, want one running at revision 2", cs)
	}

	// Once more with a rollout in progress at Shutdown.
	fake.Publish("registry.test/web:3", "3")
	accepted := make(chan struct{})
	go func() {
		_, err := rec.Apply(ctx, &fleetv1.DeploymentSpec{Name: "web", Revision: 3, Image: "registry.test/web:3"}, func() { close(accepted) })
		deployed <- err
	}()
	<-accepted
	go pass()
	<-passed
	rec.Shutdown()
	if err := <-deployed; !errors.Is(err, context.Canceled) {
		t.Errorf("deploy r3 at shutdown = %v, want canceled", err)
	}
	synctest.Wait()
	before, _ := fake.List(ctx)
	time.Sleep(time.Hour)
	after, _ := fake.List(ctx)
	if !sameContainers(before, after) {
		t.Errorf("containers changed after Shutdown returned: %+v, then %+v", before, after)
	}
}

func sameContainers(a, b []engine.Container) bool {
	if len(a) != len(b) {
		return false
	}
	ids := map[string]bool{}
	for _, c := range a {
		ids[c.ID+"/"+boolString(c.Running)] = true
	}
	for _, c := range b {
		if !ids[c.ID+"/"+boolString(c.Running)] {
			return false
		}
	}
	return true
}

func boolString(b bool) string {
	if b {
		return "running"
	}
	return "not running"
}
