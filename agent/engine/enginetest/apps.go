package enginetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// appNetworksAndVolumes: an application's network is created once and
// joined with the service's alias, the service and hash labels are the
// ones given, and networks and volumes are removed (a missing one is no
// error).
func appNetworksAndVolumes(t *testing.T, setup Setup) {
	e, img, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Pull(ctx, img, "", nil); err != nil {
		t.Fatal(err)
	}
	suffix := time.Now().UnixNano()
	net, vol := fmt.Sprintf("fleet-suite%d-lan", suffix), fmt.Sprintf("fleet-suite%d-data", suffix)
	t.Cleanup(func() {
		e.RemoveNetwork(context.Background(), net)
		e.RemoveVolume(context.Background(), vol)
	})
	for range 2 {
		if err := e.EnsureNetwork(ctx, net, true); err != nil {
			t.Fatalf("EnsureNetwork = %v", err)
		}
	}
	spec := &fleetv1.DeploymentSpec{Name: "suite", Revision: 2, Image: img, Env: map[string]string{"MODE": "serve"},
		Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: vol, Target: "/data"}}}
	h := engine.Host{Service: "web", SpecHash: "0123456789abcdef", Networks: []engine.Network{{Name: net, Aliases: []string{"web"}}}}
	id, err := e.Create(ctx, "fleet-suite-web-r2", spec, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	cs, err := e.List(ctx)
	if err != nil || len(cs) != 1 || cs[0].Service != "web" || cs[0].SpecHash != h.SpecHash || cs[0].Deployment != "suite" {
		t.Fatalf("List = %+v, %v; want the service web with the given hash", cs, err)
	}
	if err := e.RemoveNetwork(ctx, net); err == nil {
		t.Error("RemoveNetwork of a network in use = nil, want an error")
	}
	if err := e.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := e.RemoveNetwork(ctx, net); err != nil {
			t.Errorf("RemoveNetwork = %v", err)
		}
		if err := e.RemoveVolume(ctx, vol); err != nil {
			t.Errorf("RemoveVolume = %v", err)
		}
	}
}
