package scenarios

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// BenchmarkDeployCachedImage compares, in one run, a deploy command of an
// image already on the gateway (command sent → final reply RUNNING) with a
// raw Docker create+start of the same image through the same client library
// (until the engine reports it running). Each iteration deploys a fresh
// deployment; removal is outside the timing.
func BenchmarkDeployCachedImage(b *testing.B) {
	e := newDeployEnv(b, "gw-bench", brokertest.EmbeddedInMemory, "--log-level", "warn")
	cli, reg, gw, owner, rec := e.cli, e.reg, e.gw, e.owner, e.rec
	img, _ := reg.Push(b, testimage.Spec{Repo: "team/app", Tag: "1"})
	ctx := context.Background()
	rc, err := cli.ImagePull(ctx, img, image.PullOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for buf := make([]byte, 32<<10); ; {
		if _, err := rc.Read(buf); err != nil {
			break
		}
	}
	rc.Close()

	b.Run("raw-docker", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			c, err := cli.ContainerCreate(ctx, &container.Config{Image: img, Labels: map[string]string{"io.fleet-agent.owner": owner}},
				&container.HostConfig{NetworkMode: "none"}, nil, nil, fmt.Sprintf("raw-%s-%d", gw, i))
			if err != nil {
				b.Fatal(err)
			}
			if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
				b.Fatal(err)
			}
			for {
				ci, err := cli.ContainerInspect(ctx, c.ID)
				if err != nil {
					b.Fatal(err)
				}
				if ci.State.Running {
					break
				}
			}
			b.StopTimer()
			cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
			b.StartTimer()
		}
	})

	b.Run("agent-deploy", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			name := fmt.Sprintf("d%d", i)
			r := sendLong(b, rec, gw, deploy(&fleetv1.DeploymentSpec{Name: name, Revision: 1, Image: img, NetworkMode: "none"}))
			if r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
				b.Fatalf("deploy = %v", r)
			}
			b.StopTimer()
			sendLong(b, rec, gw, ref(topic.Remove, name))
			b.StartTimer()
		}
	})
}

// BenchmarkUpdateDowntime measures, from the engine's event timestamps, the
// time between the old container stopping and the new one starting during
// an update, for both strategies (0 when the new one started first).
func BenchmarkUpdateDowntime(b *testing.B) {
	e := newDeployEnv(b, "gw-down", brokertest.EmbeddedInMemory, "--log-level", "warn")
	cli, reg, gw, owner, rec := e.cli, e.reg, e.gw, e.owner, e.rec
	img, _ := reg.Push(b, testimage.Spec{Repo: "team/app", Tag: "1"})
	for _, strategy := range []fleetv1.Update_Strategy{fleetv1.Update_STOP_FIRST, fleetv1.Update_START_FIRST} {
		b.Run(strategy.String(), func(b *testing.B) {
			name := "u" + fmt.Sprint(int(strategy))
			rev := int64(1)
			spec := func() *fleetv1.DeploymentSpec {
				return &fleetv1.DeploymentSpec{Name: name, Revision: rev, Image: img, NetworkMode: "none",
					StopTimeout: nil, Update: &fleetv1.Update{Strategy: strategy}}
			}
			prevID := sendLong(b, rec, gw, deploy(spec())).GetStatus().GetContainerId()
			var downs []time.Duration
			for b.Loop() {
				rev++
				ctx, cancel := context.WithCancel(context.Background())
				since := time.Now()
				msgs, _ := cli.Events(ctx, events.ListOptions{Since: since.Format(time.RFC3339Nano), Filters: filters.NewArgs(
					filters.Arg("type", "container"), filters.Arg("label", "io.fleet-agent.owner="+owner), filters.Arg("label", "io.fleet-agent.deployment="+name))})
				r := sendLong(b, rec, gw, deploy(spec()))
				if r.GetResult() != fleetv1.Reply_SUCCEEDED {
					b.Fatalf("update = %v", r)
				}
				var died, started time.Time
				newID := r.GetStatus().GetContainerId()
				for died.IsZero() || started.IsZero() {
					m := <-msgs
					at := time.Unix(0, m.TimeNano)
					switch {
					case m.Action == events.ActionDie && m.Actor.ID == prevID:
						died = at
					case m.Action == events.ActionStart && m.Actor.ID == newID:
						started = at
					}
				}
				cancel()
				prevID = newID
				downs = append(downs, max(0, started.Sub(died)))
			}
			sort.Slice(downs, func(i, j int) bool { return downs[i] < downs[j] })
			b.ReportMetric(float64(downs[len(downs)/2].Microseconds())/1000, "downtime-p50-ms")
			b.ReportMetric(float64(downs[len(downs)-1].Microseconds())/1000, "downtime-max-ms")
		})
	}
}
