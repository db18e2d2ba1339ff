package reconcile_test

import (
	"context"
	"testing"
	"testing/synctest"

	"github.com/fleet-agent/fleet/agent/reconcile"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestImageGCKeepsImagesItDidNotPull: an image the operator put in the
// engine (docker load, docker build) and a deployment used without a pull
// survives the deployment's removal with removeImage and image GC; an
// image the agent pulled is still collected.
func TestImageGCKeepsImagesItDidNotPull(t *testing.T) {
	tests := []struct {
		name        string
		policy      fleetv1.Pull_Policy
		removeImage bool
	}{
		{"pullPolicy NEVER, remove with removeImage", fleetv1.Pull_NEVER, true},
		{"pullPolicy NEVER, GC only", fleetv1.Pull_NEVER, false},
		{"IF_NOT_PRESENT, present and not in any registry", fleetv1.Pull_IF_NOT_PRESENT, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, reconcile.Policy{}, true)
				ctx := context.Background()
				present := func(ref string) bool { _, _, ok, _ := h.fake.Image(ctx, ref); return ok }
				const own, pulled = "operator/tool:1", "registry.test/web:1"
				h.fake.Load(own, "built on the gateway")
				h.fake.Publish(pulled, "v1")
				if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "tool", Revision: 1, Image: own, PullPolicy: tt.policy}); err != nil {
					t.Fatal(err)
				}
				if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: pulled}); err != nil {
					t.Fatal(err)
				}
				if err := h.rec.Remove(ctx, "tool", tt.removeImage); err != nil {
					t.Fatal(err)
				}
				if !present(own) {
					t.Errorf("remove (removeImage %v, GC on) removed %s, an image the agent never pulled", tt.removeImage, own)
				}
				if err := h.rec.Remove(ctx, "web", tt.removeImage); err != nil {
					t.Fatal(err)
				}
				if present(pulled) {
					t.Errorf("%s, pulled by the agent and no longer used, is still there", pulled)
				}
				if !present(own) {
					t.Errorf("GC removed %s, an image the agent never pulled", own)
				}
			})
		})
	}
}
