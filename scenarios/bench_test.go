package scenarios

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// BenchmarkCommandRoundTrip measures publish → final reply received for a
// rebirth command (which itself publishes a birth) through each broker,
// with a real agent process. It reports p50 and p99 latency.
func BenchmarkCommandRoundTrip(b *testing.B) {
	starts := append(brokertest.Brokers(b), func(tb testing.TB) testenv.Broker { return brokertest.EmbeddedInMemory(tb) })
	for _, start := range starts {
		br := start(b)
		b.Run(br.Name(), func(b *testing.B) {
			gw := "gw-bench-" + br.Name()
			rec := mqttclienttest.NewRecorder(b, br.URL(), codec.Protobuf)
			testenv.StartAgent(b, br.URL(), tenant, gw, "--log-level", "warn")
			rec.Await(b, "birth", 1, mqttclienttest.Kind(topic.Birth, gw))
			var lat []time.Duration
			i := 0
			for b.Loop() {
				i++
				ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
				t0 := time.Now()
				req, err := rec.Send(ctx, tenant, gw, rebirth(fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i)))
				if err != nil {
					b.Fatal(err)
				}
				r, err := req.Final(ctx)
				cancel()
				if err != nil || r.GetResult() != fleetv1.Reply_SUCCEEDED {
					b.Fatalf("reply %v, %v", r, err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkAgentIdleMemory reports the resident memory of a connected, idle
// agent process (VmRSS), after its first heartbeat, and its two parts: the
// pages mapped from files (mostly the agent's binary) and anonymous memory
// (heap, stacks).
func BenchmarkAgentIdleMemory(b *testing.B) {
	br := brokertest.Embedded(b)
	gw := "gw-mem"
	rec := mqttclienttest.NewRecorder(b, br.URL(), codec.Protobuf)
	agent := testenv.StartAgent(b, br.URL(), tenant, gw, "--log-level", "warn", "--metrics-interval", "1s")
	rec.Await(b, "heartbeat", 1, mqttclienttest.Kind(topic.Metrics, gw))
	var rss map[string]float64
	for b.Loop() {
		rss = procStatus(b, agent.PID(), "VmRSS", "RssFile", "RssAnon")
	}
	b.ReportMetric(rss["VmRSS"]/1e6, "rss-MB")
	b.ReportMetric(rss["RssFile"]/1e6, "file-MB")
	b.ReportMetric(rss["RssAnon"]/1e6, "anon-MB")
}

// procStatus returns the named fields of /proc/PID/status, in bytes.
func procStatus(b *testing.B, pid int, fields ...string) map[string]float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !slices.Contains(fields, k) {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			b.Fatalf("/proc/%d/status %s: %v", pid, k, err)
		}
		out[k] = kb * 1024
	}
	for _, f := range fields {
		if _, ok := out[f]; !ok {
			b.Fatalf("/proc/%d/status has no %s", pid, f)
		}
	}
	return out
}

// vmRSS is the resident memory of process pid, in bytes.
func vmRSS(b *testing.B, pid int) float64 { return procStatus(b, pid, "VmRSS")["VmRSS"] }
