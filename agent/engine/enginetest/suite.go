// Package enginetest is the contract every container engine of the agent
// keeps: one suite, run against the Docker Engine and against the fake, so
// that simulated gateways behave like real ones.
package enginetest

import (
	"context"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Engine is the engine under test: what the reconciler needs.
type Engine = reconcile.Engine

// Setup gives the suite a fresh engine (whose containers are removed at
// cleanup), a pullable image that serves (MODE=serve) and a reference that
// does not exist.
type Setup func(t *testing.T) (e Engine, image, missing string)

// Run runs the suite.
func Run(t *testing.T, setup Setup) {
	t.Run("PullAndImage", func(t *testing.T) {
		e, img, missing := setup(t)
		ctx := context.Background()
		if _, _, found, err := e.Image(ctx, missing); found || err != nil {
			t.Errorf("Image(missing) = found %v, %v; want not found, nil", found, err)
		}
		if err := e.Pull(ctx, missing, "", nil); errdefs.Code(err) != fleetv1.Reply_NOT_FOUND {
			t.Errorf("Pull(missing) = %v, want NOT_FOUND", err)
		}
		if err := e.Pull(ctx, img, "", nil); err != nil {
			t.Fatal(err)
		}
		_, digests, found, err := e.Image(ctx, img)
		if !found || err != nil || len(digests) == 0 {
			t.Fatalf("Image after pull = %v, %v, %v", digests, found, err)
		}
		remote, err := e.RemoteDigest(ctx, img, "")
		if err != nil || !hasSuffix(digests, "@"+remote) {
			t.Errorf("RemoteDigest = %q, %v; want one of %v", remote, err, digests)
		}
	})

	t.Run("ContainerLifecycleAndEvents", func(t *testing.T) {
		e, img, _ := setup(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.Pull(ctx, img, "", nil); err != nil {
			t.Fatal(err)
		}
		evs, _ := e.Events(ctx)
		spec := &fleetv1.DeploymentSpec{Name: "svc", Revision: 3, Image: img, NetworkMode: "none", Env: map[string]string{"MODE": "serve"}}
		id, err := e.Create(ctx, engine.ContainerName("svc", 3), spec, engine.Host{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Create(ctx, engine.ContainerName("svc", 3), spec, engine.Host{}); err == nil {
			t.Error("a second container with the same name was created")
		}
		if err := e.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "running", func() bool { s, err := e.Inspect(ctx, id); return err == nil && s.Running })
		awaitEvent(t, evs, id, "start")
		cs, err := e.List(ctx)
		if err != nil || len(cs) != 1 {
			t.Fatalf("List = %+v, %v", cs, err)
		}
		if c := cs[0]; c.ID != id || c.Deployment != "svc" || c.Revision != 3 || c.SpecHash != engine.SpecHash(spec) || !c.Running {
			t.Errorf("List()[0] = %+v", c)
		}
		timeout := time.Second
		if err := e.Stop(ctx, id, &timeout); err != nil {
			t.Fatal(err)
		}
		awaitEvent(t, evs, id, "die")
		if s, _ := e.Inspect(ctx, id); s.Running {
			t.Error("running after Stop")
		}
		if err := e.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := e.Remove(ctx, id); err != nil {
			t.Errorf("Remove of a removed container = %v, want nil", err)
		}
		if _, err := e.Inspect(ctx, id); errdefs.Code(err) != fleetv1.Reply_NOT_FOUND {
			t.Errorf("Inspect after Remove = %v, want NOT_FOUND", err)
		}
	})

	t.Run("AppNetworksAndVolumes", func(t *testing.T) { appNetworksAndVolumes(t, setup) })

	t.Run("ExitCode", func(t *testing.T) {
		e, img, _ := setup(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.Pull(ctx, img, "", nil); err != nil {
			t.Fatal(err)
		}
		spec := &fleetv1.DeploymentSpec{Name: "job", Revision: 1, Image: img, NetworkMode: "none", Env: map[string]string{"MODE": "exit", "EXIT_CODE": "4"}}
		id, err := e.Create(ctx, "fleet-job-r1", spec, engine.Host{})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "exited with 4", func() bool {
			s, err := e.Inspect(ctx, id)
			return err == nil && !s.Running && s.Status == "exited" && s.ExitCode == 4
		})
	})
}

func awaitEvent(t *testing.T, evs <-chan engine.Event, id, action string) {
	t.Helper()
	deadline := time.After(testenv.Timeout)
	for {
		select {
		case ev := <-evs:
			if ev.ContainerID == id && ev.Action == action {
				return
			}
		case <-deadline:
			t.Fatalf("no %s event for %s", action, id)
		}
	}
}

func hasSuffix(list []string, suffix string) bool {
	for _, s := range list {
		if len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix {
			return true
		}
	}
	return false
}
