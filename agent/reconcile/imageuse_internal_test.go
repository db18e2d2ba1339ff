package reconcile

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/store"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestImageGCWaitsForTheCreate: image GC cannot run between a rollout's
// pull and the moment its images are recorded. It did: GC after one
// deployment's removal deleted the image another had just found present,
// before its container was created (make test, TestAppsThroughAPI: "No
// such image" at create). At each create, GC's lock must be taken; the
// removal of the other deployment that shares the image, begun there,
// ends after the rollout, and the image stays.
func TestImageGCWaitsForTheCreate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db")})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		fake := engine.NewFake("t/g")
		r, err := New(Config{Engine: fake, Store: st, ImageGC: true, Publish: func(context.Context, string, *fleetv1.DeploymentStatus) {}})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Shutdown()
		ctx := context.Background()
		const img = "registry.test/web:1"
		fake.Publish(img, "v1")
		if _, err := r.Apply(ctx, &fleetv1.DeploymentSpec{Name: "old", Revision: 1, Image: img}, nil); err != nil {
			t.Fatal(err)
		}

		removed := make(chan error, 1)
		fake.BeforeCreate = func(name string) {
			if !strings.Contains(name, "new") {
				return
			}
			if r.imageUse.TryLock() {
				r.imageUse.Unlock()
				t.Errorf("image GC could run between %s's pull and its create", name)
			}
			go func() { removed <- r.Remove(ctx, "old", true) }()
		}
		if _, err := r.Apply(ctx, &fleetv1.DeploymentSpec{Name: "new", Revision: 1, Image: img}, nil); err != nil {
			t.Fatalf("deploy new: %v", err)
		}
		if err := <-removed; err != nil {
			t.Fatalf("remove old: %v", err)
		}
		if _, _, ok, _ := fake.Image(ctx, img); !ok {
			t.Errorf("%s, which new runs, was removed with old", img)
		}
	})
}
