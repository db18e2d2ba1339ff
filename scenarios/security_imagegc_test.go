package scenarios

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/docker/docker/api/types/image"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestImageGCKeepsOperatorImages (issue 12, item 11): an image the
// operator loaded into the engine (docker load) and a deployment ran with
// pullPolicy NEVER survives the deployment's removal with removeImage and
// the agent's image GC (on by default); an image the agent pulled is still
// collected.
func TestImageGCKeepsOperatorImages(t *testing.T) {
	e := newDeployEnv(t, "gw-gc", brokertest.Embedded)
	ctx := context.Background()
	own := fmt.Sprintf("fleet-operator-%s/tool:1", e.gw)
	testenv.RemoveOwned(t, e.cli, e.owner, "fleet-operator-"+e.gw+"/")
	tag, err := name.NewTag(own)
	if err != nil {
		t.Fatal(err)
	}
	var tar bytes.Buffer
	if err := tarball.Write(tag, testimage.Build(t, testimage.Spec{Repo: "operator/tool", Tag: "1", Env: map[string]string{"MESSAGE": "operator"}}), &tar); err != nil {
		t.Fatal(err)
	}
	res, err := e.cli.ImageLoad(ctx, &tar)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, res.Body) // the load ends with its output
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	present := func(ref string) bool {
		imgs, err := e.cli.ImageList(ctx, image.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range imgs {
			for _, r := range im.RepoTags {
				if r == ref {
					return true
				}
			}
		}
		return false
	}
	if !present(own) {
		t.Fatalf("docker load did not tag %s", own)
	}
	pulled, _ := e.reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "1"})

	for _, spec := range []*fleetv1.DeploymentSpec{
		{Name: "tool", Revision: 1, Image: own, NetworkMode: "none", PullPolicy: fleetv1.Pull_NEVER},
		{Name: "web", Revision: 1, Image: pulled, NetworkMode: "none"},
	} {
		if r := sendLong(t, e.rec, e.gw, deploy(spec)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
			t.Fatalf("deploy %s = %v, want SUCCEEDED", spec.GetName(), r)
		}
	}
	for _, dep := range []string{"tool", "web"} {
		rm := ref(topic.Remove, dep)
		rm.GetRemove().RemoveImage = true
		if r := sendLong(t, e.rec, e.gw, rm); r.GetResult() != fleetv1.Reply_SUCCEEDED {
			t.Fatalf("remove %s = %v, want SUCCEEDED", dep, r)
		}
	}
	if !present(own) {
		t.Errorf("%s, loaded by the operator and run with pullPolicy NEVER, was removed by the agent", own)
	}
	if present(pulled) {
		t.Errorf("%s, pulled by the agent and no longer used, is still there", pulled)
	}
}
