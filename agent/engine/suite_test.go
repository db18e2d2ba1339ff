package engine_test

import (
	"context"
	"testing"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/engine/enginetest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
)

func TestSuiteDocker(t *testing.T) {
	enginetest.Run(t, func(t *testing.T) (enginetest.Engine, string, string) {
		reg := testimage.NewRegistry(t)
		img, _ := reg.Push(t, testimage.Spec{Repo: "suite/app", Tag: "1"})
		var d *engine.Docker
		// Registered first, so it runs after newDocker's container cleanup.
		t.Cleanup(func() { d.RemoveImage(context.Background(), img) })
		d, _, _ = newDocker(t)
		return d, img, reg.Host + "/suite/missing:1"
	})
}

func TestSuiteFake(t *testing.T) {
	enginetest.Run(t, func(t *testing.T) (enginetest.Engine, string, string) {
		f := engine.NewFake("test/fake")
		img := "registry.test/suite/app:1"
		f.Publish(img, "v1")
		return f, img, "registry.test/suite/missing:1"
	})
}
