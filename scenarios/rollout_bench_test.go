package scenarios

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// BenchmarkRollout measures a rollout with no rate limit to every gateway
// of a simulated fleet (pulls of 10 ms), from creation to all SUCCEEDED,
// and the broker's message rate meanwhile. The 10,000-gateway fleet runs in
// two `cloud-sim fleet` processes (see BenchmarkFleetBirths). With
// ROLLOUT_PLOT=file.png it draws the gateways per state over time of the
// largest rollout.
func BenchmarkRollout(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := fleetForBench(b, n)
			rev := 0
			for b.Loop() {
				rev++
				recvBefore, sentBefore := c.Broker.Messages()
				t0 := time.Now()
				v := createRollout(b, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
					Deployment: deploymentJSON(rev, fmt.Sprintf("registry.example.com/web:%d", rev)), SkipRegistryCheck: true,
					Strategy: api.Strategy{MaxInFlight: 2000}})
				var samples []stateSample
				for {
					var st api.RolloutView
					c.get(b, "/v1/rollouts/"+v.ID, &st)
					samples = append(samples, stateSample{time.Since(t0), st.Counts})
					if !st.Active {
						if st.State != api.RolloutSucceeded {
							b.Fatalf("rollout %s: %v", st.State, st.Counts)
						}
						break
					}
					if time.Since(t0) > 5*time.Minute {
						b.Fatalf("rollout still %s after 5 minutes: %v", st.State, st.Counts)
					}
					time.Sleep(250 * time.Millisecond)
				}
				elapsed := time.Since(t0)
				recv, sent := c.Broker.Messages()
				b.ReportMetric(elapsed.Seconds(), "s/rollout")
				b.ReportMetric(float64(recv-recvBefore+sent-sentBefore)/elapsed.Seconds(), "broker-msgs/s")
				if path := os.Getenv("ROLLOUT_PLOT"); path != "" && n == 10000 {
					if err := plotStates(path, samples); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkRolloutRate measures the dispatch rate of a rollout limited to
// 1,200 gateways a minute over 600 simulated gateways (30 s).
func BenchmarkRolloutRate(b *testing.B) {
	const perMinute, n = 1200.0, 600
	c := fleetForBench(b, n)
	rev := 0
	for b.Loop() {
		rev++
		v := createRollout(b, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
			Deployment: deploymentJSON(rev, fmt.Sprintf("registry.example.com/web:%d", rev)), SkipRegistryCheck: true,
			Strategy: api.Strategy{RatePerMinute: perMinute}})
		v = waitRollout(b, c, v.ID, 5*time.Minute)
		var first, last time.Time
		for i, g := range v.Gateways {
			if i == 0 || g.DispatchedAt.Before(first) {
				first = g.DispatchedAt
			}
			if g.DispatchedAt.After(last) {
				last = g.DispatchedAt
			}
		}
		measured := float64(n-1) / last.Sub(first).Minutes()
		b.ReportMetric(measured, "measured/min")
		b.ReportMetric(100*(measured-perMinute)/perMinute, "error-%")
	}
}

// fleetForBench starts serve and n simulated gateways online: in this
// process up to 5,000, else in two fleet processes.
func fleetForBench(b *testing.B, n int) *cloud {
	b.Helper()
	if n <= 5000 {
		c := startCloud(b, 0)
		f, err := startFleet(b, c, n)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		waitOnlineTB(b, c, n)
		return c
	}
	c := startCloud(b, 0)
	bin := testenv.Binary(b, "cloud-sim")
	for i, prefix := range []string{"sim-a-", "sim-b-"} {
		cmd := exec.Command(bin, "fleet", "--api", c.APIURL, "--broker", "mqtt://"+c.mqtt, "--tenant", "sim",
			"--prefix", prefix, "--count", fmt.Sprint(n/2), "--pull-time", "10ms", "--state", filepath.Join(b.TempDir(), fmt.Sprint(i)))
		cmd.Env = append(os.Environ(), "CLOUD_SIM_TOKEN="+c.APIToken)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	}
	waitOnlineTB(b, c, n)
	return c
}

func waitOnlineTB(b *testing.B, c *cloud, n int) {
	online := true
	deadline := time.Now().Add(5 * time.Minute)
	for len(c.Controller.Gateways(inventory.Filter{Tenant: "sim", Online: &online})) < n {
		if time.Now().After(deadline) {
			b.Fatalf("fewer than %d gateways online after 5 minutes", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type stateSample struct {
	at     time.Duration
	counts map[string]int
}

// plotStates draws gateways per state over time as a PNG line chart:
// QUEUED grey, IN_PROGRESS blue, SUCCEEDED green, failures red; a light
// grid line every 10 s and every 1,000 gateways.
func plotStates(path string, samples []stateSample) error {
	const w, h, margin = 900, 500, 40
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.White)
		}
	}
	total, end := 0, samples[len(samples)-1].at
	for _, n := range samples[0].counts {
		total += n
	}
	px := func(t time.Duration) int { return margin + int(float64(w-2*margin)*t.Seconds()/end.Seconds()) }
	py := func(n int) int { return h - margin - int(float64(h-2*margin)*float64(n)/float64(total)) }
	grid := color.RGBA{225, 225, 225, 255}
	for s := time.Duration(0); s <= end; s += 10 * time.Second {
		for y := margin; y <= h-margin; y++ {
			img.Set(px(s), y, grid)
		}
	}
	for n := 0; n <= total; n += 1000 {
		for x := margin; x <= w-margin; x++ {
			img.Set(x, py(n), grid)
		}
	}
	for x := margin; x <= w-margin; x++ {
		img.Set(x, h-margin, color.Black)
	}
	for y := margin; y <= h-margin; y++ {
		img.Set(margin, y, color.Black)
	}
	series := []struct {
		states []string
		c      color.RGBA
	}{
		{[]string{api.GwQueued}, color.RGBA{128, 128, 128, 255}},
		{[]string{api.GwInProgress}, color.RGBA{30, 100, 220, 255}},
		{[]string{api.GwSucceeded}, color.RGBA{20, 160, 60, 255}},
		{[]string{api.GwFailed, api.GwTimedOut, api.GwRejected}, color.RGBA{220, 40, 40, 255}},
	}
	for _, s := range series {
		var prevX, prevY int
		for i, sm := range samples {
			n := 0
			for _, st := range s.states {
				n += sm.counts[st]
			}
			x, y := px(sm.at), py(n)
			if i > 0 {
				line(img, prevX, prevY, x, y, s.c)
			}
			prevX, prevY = x, y
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// line draws a 2-pixel line (Bresenham).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	err := dx + dy
	for {
		img.Set(x0, y0, c)
		img.Set(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * err
		if e2 >= dy {
			err += dy
			x0 += sx
		}
		if e2 <= dx {
			err += dx
			y0 += sy
		}
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
