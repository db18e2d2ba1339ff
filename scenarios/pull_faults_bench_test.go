package scenarios

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/faultproxy"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// pullRun is one deploy of the benchmark image.
type pullRun struct {
	present  time.Duration // deploy sent → the image in the engine under its name (0: never)
	lastByte time.Duration // deploy sent → the last byte through the proxy
	reply    time.Duration // deploy sent → final reply, or the bound
	bytes    int64         // through the proxy
	finished bool          // SUCCEEDED within the bound
}

// pullStats sums the runs of one pull mode.
type pullStats struct {
	n, finished      int
	present, reply   time.Duration
	lastByte         time.Duration
	bytes            int64
	presentN         int
	minPres, maxPres time.Duration
}

func (s *pullStats) add(r pullRun) {
	s.n++
	s.reply += r.reply
	s.lastByte += r.lastByte
	s.bytes += r.bytes
	if r.finished {
		s.finished++
	}
	if r.present > 0 {
		s.presentN++
		s.present += r.present
		if s.minPres == 0 || r.present < s.minPres {
			s.minPres = r.present
		}
		s.maxPres = max(s.maxPres, r.present)
	}
}

func (s *pullStats) meanPresent() time.Duration {
	if s.presentN == 0 {
		return 0
	}
	return s.present / time.Duration(s.presentN)
}

// report adds s's metrics under the name of its mode.
func (s *pullStats) report(b *testing.B, mode string, size int64) {
	b.ReportMetric(s.meanPresent().Seconds(), mode+"-s-to-image")
	b.ReportMetric((s.reply / time.Duration(s.n)).Seconds(), mode+"-s-to-reply")
	b.ReportMetric((s.lastByte / time.Duration(s.n)).Seconds(), mode+"-s-to-last-byte")
	b.ReportMetric(float64(s.bytes)/float64(s.n)/float64(size), mode+"-bytes/image")
	b.ReportMetric(float64(s.finished)/float64(s.n), mode+"-finished")
	b.Logf("%s: %d runs, %d finished; to the last byte through the proxy mean %v; to the image in the engine mean %v (min %v, max %v); to the reply mean %v; bytes through the proxy %.3f × the image",
		mode, s.n, s.finished, (s.lastByte / time.Duration(s.n)).Round(time.Millisecond), s.meanPresent().Round(time.Millisecond),
		s.minPres.Round(time.Millisecond), s.maxPres.Round(time.Millisecond),
		(s.reply / time.Duration(s.n)).Round(time.Millisecond), float64(s.bytes)/float64(s.n)/float64(size))
}

// faultBenchLink is the link of a pull benchmark: its faults, and how long a
// pull may take.
type faultBenchLink struct {
	cut   faultproxy.Cut
	rate  int64 // bytes/s; 0 unlimited
	bound time.Duration
}

// runPull deploys img with mode through a new link, on a new
// agent, and waits up to bound. The set-up and the clean-up (the agent
// killed, which also ends a pull dockerd is still making for it, and the
// image removed from the engine) are outside the timer.
func runPull(b *testing.B, reg *testimage.Registry, img pullImage, mode fleetv1.Pull_Mode, link faultBenchLink) pullRun {
	b.StopTimer()
	l := newFaultLink(b, reg)
	e := newPullEnv(b, "gw-bench-pull", l)
	defer func() {
		b.StopTimer()
		e.agent.Kill()
		img.remove(b, e.cli, e.owner)
		l.proxy.Close()
		b.StartTimer()
	}()
	if _, err := e.cli.ImageInspect(context.Background(), img.config); err == nil {
		b.Fatalf("the engine has the image before the pull")
	}
	l.proxy.SetCut(link.cut)
	l.proxy.Throttle(link.rate)
	ref := l.ref("team/big:1")
	spec := pullSpec(ref, mode)
	spec.Update.ProgressDeadlineSeconds = uint32(link.bound.Seconds())
	b.StartTimer()

	start := time.Now()
	var last atomic.Int64
	l.proxy.Observe(func(int64) { last.Store(int64(time.Since(start))) })
	ctx, cancel := context.WithTimeout(context.Background(), link.bound)
	defer cancel()
	req, err := e.rec.Send(ctx, tenant, e.gw, deploy(spec))
	if err != nil {
		b.Fatal(err)
	}
	present := make(chan time.Duration, 1)
	go func() {
		defer close(present)
		for ctx.Err() == nil {
			if _, err := e.cli.ImageInspect(ctx, ref); err == nil {
				present <- time.Since(start)
				return
			}
			t := time.NewTimer(20 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}()
	r, err := req.Final(ctx)
	run := pullRun{reply: time.Since(start), finished: err == nil && r.GetResult() == fleetv1.Reply_SUCCEEDED}
	if run.finished {
		run.present = <-present
	}
	cancel()
	run.bytes = l.proxy.BytesDown()
	run.lastByte = time.Duration(last.Load())
	if err == nil && !run.finished {
		b.Logf("%v deploy failed: %v", mode, r)
	}
	return run
}

// benchPulls alternates the agent's and the engine's pulls of the 64 MB
// image (which goes first alternates too) over link.
func benchPulls(b *testing.B, link faultBenchLink) {
	testenv.DockerClient(b)

	reg := testimage.NewRegistry(b)
	big := newPullImage(b, appLayer(b), 3, 20*mib)
	big.push(b, reg, "team/big:1")
	b.Logf("image: %d bytes in %d layers", big.size, len(big.layers))
	var agent, engine pullStats
	i := 0
	for b.Loop() {
		modes := []fleetv1.Pull_Mode{fleetv1.Pull_AGENT, fleetv1.Pull_ENGINE}
		if i%2 == 1 {
			modes[0], modes[1] = modes[1], modes[0]
		}
		for _, m := range modes {
			r := runPull(b, reg, big, m, link)
			if m == fleetv1.Pull_AGENT {
				agent.add(r)
			} else {
				engine.add(r)
			}
		}
		i++
	}
	agent.report(b, "agent", big.size)
	engine.report(b, "engine", big.size)
	if a, e := agent.meanPresent(), engine.meanPresent(); a > 0 && e > 0 {
		b.ReportMetric(a.Seconds()/e.Seconds(), "agent/engine")
		b.Logf("agent / engine, to the image in the engine: %.3f", a.Seconds()/e.Seconds())
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkPullCleanLink: the 64 MB, 4-layer image deployed over a
// clean loopback link (through the fault proxy, no fault), pulled by the
// agent (pull.mode AGENT: fetched into its store, then into the engine from
// there) and by the engine (ENGINE: dockerd's own pull, as `docker pull`),
// alternately in one run, each on a new agent and an engine without the
// image. Timed from the deploy sent to the image present in the engine
// under its name, and to the final reply.
func BenchmarkPullCleanLink(b *testing.B) {
	benchPulls(b, faultBenchLink{bound: 2 * time.Minute})
}

// BenchmarkPullCutLink: the same over a link cut every 4 MiB (counted
// across connections), the engine's pull bounded at 3 minutes: bytes
// through the proxy, wall time, and whether each finished.
func BenchmarkPullCutLink(b *testing.B) {
	benchPulls(b, faultBenchLink{cut: faultproxy.Cut{Every: 4 * mib}, bound: 3 * time.Minute})
}

// BenchmarkPullSlowLink: the same over a clean link throttled to 8 MiB/s
// (the proxy's cap, all connections together), where the download, not
// the loopback, sets the pace.
func BenchmarkPullSlowLink(b *testing.B) {
	benchPulls(b, faultBenchLink{rate: 8 * mib, bound: 2 * time.Minute})
}
