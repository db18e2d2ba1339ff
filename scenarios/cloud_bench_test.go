package scenarios

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

const benchFleet = 10000

// benchBirth is a birth as a real agent sends it: host and engine facts,
// labels, one deployment and one registry credential.
func benchBirth(i int) *fleetv1.Birth {
	return &fleetv1.Birth{GatewayId: fmt.Sprintf("gw-%d", i), Tenant: "bench", Session: 1, AgentVersion: "1.0.0", ProtocolVersion: 1,
		StartedAt: timestamppb.Now(), Timestamp: timestamppb.Now(),
		Host:   &fleetv1.Host{Hostname: fmt.Sprintf("gateway-%d", i), Os: "linux", Arch: "arm64", CpuCount: 4, MemoryBytes: 4 << 30, Kernel: "6.1.0"},
		Engine: &fleetv1.Engine{Name: "docker", Version: "24.0.7", ApiVersion: "1.43", Reachable: true},
		Labels: map[string]string{"site": fmt.Sprintf("site-%d", i%50), "tier": "main", "hw": "rev-b"}, Groups: []string{"all"},
		Capabilities: []string{"deploy", "remove", "start", "stop", "restart", "set-credentials", "check-registry", "rebirth"},
		PublicKey:    "bWJ0c2VjcmV0a2V5bWJ0c2VjcmV0a2V5bWJ0c2VjcmV0a2V5MTIzNA==",
		Deployments:  []*fleetv1.DeploymentSummary{{Name: "web", Revision: 3, Phase: fleetv1.DeploymentStatus_RUNNING, Image: "registry.example.com/team/web:3", Digest: "sha256:0123456789abcdef"}},
		Registries:   []*fleetv1.RegistrySummary{{Registry: "registry.example.com", Kind: "basic", Username: "robot", Fingerprint: "0123456789ab"}},
	}
}

func benchController(b *testing.B) *controller.Controller {
	b.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	dir := b.TempDir()
	keys, err := credential.LoadKeys(dir+"/k", dir+"/s")
	if err != nil {
		b.Fatal(err)
	}
	c, err := controller.New(context.Background(), controller.Config{Store: st, Keys: keys, Scheme: topic.Default()})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func ingestBirths(c *controller.Controller, n int) {
	for i := range n {
		c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "bench", Gateway: fmt.Sprintf("gw-%d", i)}, Message: benchBirth(i), At: time.Now()})
	}
}

// BenchmarkControllerMemory reports the controller's heap per 1,000
// gateways in the inventory, measured with 10,000 of them.
func BenchmarkControllerMemory(b *testing.B) {
	for b.Loop() {
		c := benchController(b)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ingestBirths(c, benchFleet)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(benchFleet/1000)/(1<<20), "MiB/1k-gateways")
		runtime.KeepAlive(c)
	}
}

// BenchmarkControllerMemoryMetrics reports the controller's heap per
// 1,000 gateways that have sent an hour of heartbeats (one a minute) after
// their births: the hour of metrics the console charts is kept in memory.
func BenchmarkControllerMemoryMetrics(b *testing.B) {
	for b.Loop() {
		c := benchController(b)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ingestBirths(c, benchFleet)
		start := time.Now().Add(-time.Hour)
		for m := range 60 {
			at := start.Add(time.Duration(m) * time.Minute)
			for i := range benchFleet {
				c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Metrics, Tenant: "bench", Gateway: fmt.Sprintf("gw-%d", i)}, At: at,
					Message: &fleetv1.Metrics{Load1: 0.5, MemoryTotalBytes: 4 << 30, MemoryAvailableBytes: 1 << 30, DiskTotalBytes: 32 << 30, DiskFreeBytes: 8 << 30, RunningCount: 1}})
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(benchFleet/1000)/(1<<20), "MiB/1k-gateways")
		runtime.KeepAlive(c)
	}
}

// BenchmarkControllerIngest measures status messages applied per second
// with 10,000 gateways in the inventory: "inprocess" calls Ingest with
// decoded messages; "broker" publishes encoded statuses (QoS 1, retained,
// as agents do) from 8 connections through the embedded broker to a
// started controller, and times until the controller has applied them all.
func BenchmarkControllerIngest(b *testing.B) {
	statuses := make([]*fleetv1.DeploymentStatus, benchFleet)
	for i := range statuses {
		statuses[i] = &fleetv1.DeploymentStatus{Name: "web", Revision: 4, Phase: fleetv1.DeploymentStatus_PULLING, Image: "registry.example.com/team/web:4",
			PullProgress: &fleetv1.PullProgress{BytesDone: 1 << 20, BytesTotal: 8 << 20}, UpdatedAt: timestamppb.Now()}
	}
	b.Run("inprocess", func(b *testing.B) {
		c := benchController(b)
		ingestBirths(c, benchFleet)
		i := 0
		for b.Loop() {
			g := i % benchFleet
			c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Status, Tenant: "bench", Gateway: fmt.Sprintf("gw-%d", g), Deployment: "web"},
				Message: statuses[g], At: time.Now()})
			i++
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("broker", func(b *testing.B) {
		c := startCloud(b, 0)
		for i := range benchFleet {
			c.Controller.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "bench", Gateway: fmt.Sprintf("gw-%d", i)}, Message: benchBirth(i), At: time.Now()})
		}
		payloads := make([][]byte, benchFleet)
		for i, s := range statuses {
			payloads[i], _ = proto.Marshal(s)
		}
		const conns = 8
		pubs := make([]*autopaho.ConnectionManager, conns)
		u, _ := url.Parse("mqtt://" + c.mqtt)
		for i := range pubs {
			ready := make(chan struct{})
			cm, err := autopaho.NewConnection(context.Background(), autopaho.ClientConfig{
				ServerUrls: []*url.URL{u}, KeepAlive: 30, CleanStartOnInitialConnection: true,
				ConnectUsername: identity.ControllerUser, ConnectPassword: []byte(c.ControllerPassword),
				OnConnectionUp: func(*autopaho.ConnectionManager, *paho.Connack) { close(ready) },
				ClientConfig:   paho.ClientConfig{ClientID: fmt.Sprintf("load-%d", i)},
			})
			if err != nil {
				b.Fatal(err)
			}
			<-ready
			pubs[i] = cm
			b.Cleanup(func() { cm.Disconnect(context.Background()) })
		}
		start := c.Controller.Ingested()
		b.ResetTimer()
		var wg sync.WaitGroup
		// Each connection keeps 64 QoS 1 messages in flight from 64
		// publishing goroutines (a goroutine per message would cost the
		// generator more than the broker).
		const perConn = 64
		for p := range conns {
			for w := range perConn {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := p + w*conns; i < b.N; i += conns * perConn {
						g := i % benchFleet
						_, err := pubs[p].Publish(context.Background(), &paho.Publish{QoS: 1, Retain: true,
							Topic: topic.Default().Status("bench", fmt.Sprintf("gw-%d", g), "web"), Payload: payloads[g],
							Properties: &paho.PublishProperties{ContentType: "application/x-protobuf"}})
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		deadline := time.Now().Add(time.Minute)
		for c.Controller.Ingested()-start < uint64(b.N) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		if got := c.Controller.Ingested() - start; got < uint64(b.N) {
			b.Fatalf("controller applied %d of %d statuses", got, b.N)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}

// BenchmarkFleetBirths measures the time from starting 10,000 simulated
// gateways (the real agent code on the fake engine, each with its own MQTT
// connection and state directory) to all 10,000 births in the inventory of
// a cloud-sim serve running in this process. The gateways run in two
// `cloud-sim fleet` processes of 5,000: each holds two files open per
// gateway (its state file and its connection), and a process here may open
// 20,000.
func BenchmarkFleetBirths(b *testing.B) {
	bin := testenv.Binary(b, "cloud-sim")
	for b.Loop() {
		c := startCloud(b, 0)
		t0 := time.Now()
		var procs []*exec.Cmd
		for i, prefix := range []string{"sim-a-", "sim-b-"} {
			cmd := exec.Command(bin, "fleet", "--api", c.APIURL, "--broker", "mqtt://"+c.mqtt, "--tenant", "sim",
				"--prefix", prefix, "--count", fmt.Sprint(benchFleet/2), "--state", filepath.Join(b.TempDir(), fmt.Sprint(i)))
			cmd.Env = append(os.Environ(), "CLOUD_SIM_TOKEN="+c.APIToken)
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			procs = append(procs, cmd)
		}
		// The overview counts without copying a record: listing the
		// gateways every 50 ms copied all of them and took a third of the
		// controller's CPU, the benchmark's own cost.
		count := func() int { return c.Controller.Overview("sim").Summary.Online }
		deadline := time.Now().Add(5 * time.Minute)
		for count() < benchFleet {
			if time.Now().After(deadline) {
				b.Fatalf("only %d births after 5 minutes", count())
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "s/10k-births")
		runtime.GC()
		runtime.GC() // a second cycle empties the pools' victim caches
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "MiB-heap-serve")
		b.ReportMetric(float64(ms.HeapAlloc)/benchFleet/1024, "KiB-heap-serve/gateway")
		var rss float64
		for _, p := range procs {
			rss += vmRSS(b, p.Process.Pid)
		}
		b.ReportMetric(rss/benchFleet/1024, "KiB-rss/sim-gateway")
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			p.Wait()
		}
		// Closed now, not at the benchmark's cleanup: the next run's heap
		// figure held this cloud's 10,000 records too (2x, -count 2).
		if err := c.Close(); err != nil {
			b.Logf("close: %v", err)
		}
		c.Server = nil
	}
}

// startFleet starts n simulated gateways of tenant "sim" in this process.
func startFleet(b testing.TB, c *cloud, n int) (*simfleet.Fleet, error) {
	return serve.StartFleet(context.Background(), c.Controller, c.BrokerURL, b.TempDir(), topic.Default(),
		simfleet.Config{Count: n, Tenant: "sim", PullTime: 10 * time.Millisecond, MetricsInterval: 10 * time.Minute})
}
