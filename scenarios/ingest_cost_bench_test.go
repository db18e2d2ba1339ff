package scenarios

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/internal/faultproxy"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// The ingest cost benchmark's load: 10,000 provisioned gateways, as in
// BenchmarkControllerIngest, each publishing 10 statuses one after another
// (waiting for each PUBACK, as the agent's outbox does), 512 of them at once.
const (
	costGateways = 10000
	costStatuses = 100000
	costInFlight = 512
	costTenant   = "bench"
	clockTicks   = 100 // USER_HZ: the unit of utime and stime in /proc/PID/stat
)

// BenchmarkIngestCost measures what each status message a gateway
// publishes costs in CPU, and which process pays: every part runs in its
// own process and its CPU time (utime+stime of /proc/PID/stat) is read
// before and after 100,000 statuses. The publishers (10,000 gateways'
// connections, births first) are this test process.
//
//   - mosquitto: cloud-sim serve --broker against a Mosquitto: the
//     controller's own cost, apart from the broker's, at the rate the
//     publishers reach on this machine (the controller is mostly idle
//     between statuses, and each one wakes it);
//   - mosquitto-backlog: the same, with the controller behind a proxy
//     that holds what Mosquitto sends it while the statuses are
//     published; then it takes them as fast as it can. Its CPU per status
//     is what a busy controller pays, and gives the messages a second a
//     core it can take; msgs/s is its rate once resumed;
//   - embedded-1: cloud-sim serve alone (broker and controller in one
//     process);
//   - embedded-2: and a second replica, serve --broker and --nats pointing
//     at the first's embedded broker and NATS.
//
// Each replica's share is what its own counter (GET /v1/replica) says it
// applied, over the messages sent. A run ends when every replica has
// applied them all, or when together they have and no counter moved for
// half a second (so ingest shared across replicas ends too). Besides the
// benchmark's metrics it prints a table, with each process's share of a
// core while the gateways are connected and silent, and the CPU the rest
// of the machine took meanwhile (other sessions share the two cores).
//
// FLEET_BENCH_PROFILES=DIR has each serve write a CPU and an allocation
// profile into DIR; FLEET_BENCH_SERVE_ENV="K=V …" adds to each serve's
// environment (GOMEMLIMIT=512MiB, say).
//
// Run it with -benchtime 1x (an iteration is the whole run; its processes
// and 10,000 connections live until the sub-benchmark ends) and -count N
// to repeat it.
func BenchmarkIngestCost(b *testing.B) {
	bin := testenv.Binary(b, "cloud-sim")
	var rows []costRun
	for _, setup := range []string{"mosquitto", "mosquitto-backlog", "embedded-1", "embedded-2"} {
		b.Run(setup, func(b *testing.B) {
			for b.Loop() {
				r := runIngestCost(b, bin, setup)
				rows = append(rows, r)
				r.report(b)
			}
		})
	}
	printCostTable(rows)
}

// costProc is a process whose CPU time is read.
type costProc struct {
	name string
	pid  int
	// replica, when set, is a controller whose counter is read.
	replica *serveProc
}

// costRun is one setup's result.
type costRun struct {
	setup   string
	sent    uint64
	elapsed time.Duration
	procs   []costProc
	cpu     []time.Duration // per proc, over the statuses
	applied []uint64        // per proc (replicas only)
	idle    []float64       // per proc: share of a core, all gateways connected and silent
	peak    []float64       // per proc: MiB, its peak resident memory (VmHWM) by the run's end
	// others is the CPU the rest of the machine used meanwhile (other
	// sessions share the two cores).
	others time.Duration
	// drain, in a backlog run, is how long the replicas took to apply
	// the statuses waiting for them once they were resumed.
	drain time.Duration
}

func runIngestCost(b *testing.B, bin, setup string) costRun {
	start := time.Now()
	procs, brokerURL, hold := startCostSetup(b, bin, setup)
	pw := provisionBench(b, procs)
	gws := connectGateways(b, brokerURL, pw)
	// Births are applied first, and the CPU they cost is not counted.
	births := awaitApplied(b, procs, make([]uint64, len(procs)), costGateways)
	b.Logf("%s: started, %d gateways connected and their births applied in %.1f s", setup, costGateways, time.Since(start).Seconds())
	idle := idleCost(procs)
	payloads := costPayloads(b)
	base := sampleCost(b, procs)
	if hold != nil {
		hold.Stall()
	}
	publishStatuses(b, gws, payloads)
	resumed := time.Now()
	if hold != nil {
		hold.Resume()
	}
	end := awaitApplied(b, procs, base.applied, costStatuses)
	r := costRun{setup: setup, sent: costStatuses, elapsed: end.at.Sub(base.at), procs: procs, idle: idle, others: end.machine - base.machine}
	if hold != nil {
		r.drain = end.at.Sub(resumed)
	}
	for i := range procs {
		r.cpu = append(r.cpu, end.cpu[i]-base.cpu[i])
		r.peak = append(r.peak, peakRSS(b, procs[i].pid))
		r.applied = append(r.applied, end.applied[i]-base.applied[i])
		r.others -= r.cpu[i]
	}
	if births.applied[firstReplica(procs)] != base.applied[firstReplica(procs)] {
		b.Fatalf("applied %v after the births, %v before the statuses: something else publishes", births.applied, base.applied)
	}
	return r
}

// idleCost is each process's share of a core with every gateway connected
// and silent: after a flush interval (the controller writes the births to
// JetStream within 2 s), over the next 2 s.
func idleCost(procs []costProc) []float64 {
	time.Sleep(2500 * time.Millisecond) // not a wait for a condition: the measurement's window
	from := make([]time.Duration, len(procs))
	for i, p := range procs {
		from[i], _ = cpuTime(p.pid)
	}
	const window = 2 * time.Second
	time.Sleep(window)
	out := make([]float64, len(procs))
	for i, p := range procs {
		to, _ := cpuTime(p.pid)
		out[i] = (to - from[i]).Seconds() / window.Seconds()
	}
	return out
}

// startCostSetup starts the broker and the replicas of setup; the last
// process listed is this one, the publishers. For mosquitto-backlog it
// also returns the proxy between the controller and Mosquitto, which
// holds what Mosquitto sends the controller while stalled.
func startCostSetup(b *testing.B, bin, setup string) ([]costProc, string, *faultproxy.Proxy) {
	self := costProc{name: "publishers (this process)", pid: os.Getpid()}
	switch setup {
	case "mosquitto", "mosquitto-backlog":
		var m testenv.Broker
		var hold *faultproxy.Proxy
		brokerURL := ""
		if setup == "mosquitto" {
			m = testenv.Mosquitto(b)
			brokerURL = m.URL()
		} else {
			// The backlog waits at Mosquitto, which queues at most
			// max_queued_messages for a client, QoS 0 ones too.
			m = testenv.MosquittoQueue(b, 0)
			u, err := url.Parse(m.URL())
			if err != nil {
				b.Fatal(err)
			}
			if hold, err = faultproxy.New(u.Host); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { hold.Close() })
			brokerURL = "mqtt://" + hold.Addr()
		}
		pid, ok := m.(interface{ PID() int })
		if !ok {
			b.Fatal("testenv.Mosquitto gives no PID")
		}
		// NATS in its own process too, as in production: what storing
		// the inventory costs shows apart from the controller.
		nats := testenv.StartNATSCluster(b, 1, testenv.NATSOptions{})
		ctrl := startServe(b, bin, "controller", "--broker", brokerURL, "--nats", nats.URL(0), "--nats-creds", nats.CredsFile)
		return []costProc{{name: "mosquitto (broker)", pid: pid.PID()}, {name: "nats-server (state)", pid: nats.PID(0)},
			{name: "serve --broker --nats (controller)", pid: ctrl.pid(), replica: ctrl}, self}, m.URL(), hold
	case "embedded-1", "embedded-2":
		mqtt, nats := testenv.FreeAddr(b), testenv.FreeAddr(b)
		pass := filepath.Join(b.TempDir(), "controller.pass")
		if err := os.WriteFile(pass, []byte("bench-controller-password"), 0o600); err != nil {
			b.Fatal(err)
		}
		a := startServe(b, bin, "replica-a", "--mqtt-listen", mqtt, "--nats-listen", nats, "--controller-password-file", pass)
		procs := []costProc{{name: "serve a (broker+controller)", pid: a.pid(), replica: a}}
		if setup == "embedded-2" {
			r := startServe(b, bin, "replica-b", "--broker", "mqtt://"+mqtt, "--broker-password-file", pass,
				"--nats", "nats://"+nats, "--nats-creds", filepath.Join(a.data, "nats-login"), "--secrets-key", filepath.Join(a.data, "controller.key"))
			procs = append(procs, costProc{name: "serve b --broker (controller)", pid: r.pid(), replica: r})
		}
		return append(procs, self), "mqtt://" + mqtt, nil
	}
	b.Fatalf("unknown setup %q", setup)
	return nil, "", nil
}

// serveProc is a cloud-sim serve process.
type serveProc struct {
	id   string
	cmd  *exec.Cmd
	api  *apiclient.Client
	data string
	logs *testenv.LogBuffer
}

func (s *serveProc) pid() int { return s.cmd.Process.Pid }

// startServe runs cloud-sim serve with id as its --controller-id and its
// own data directory and API, and waits for its API.
func startServe(b *testing.B, bin, id string, args ...string) *serveProc {
	b.Helper()
	s := &serveProc{id: id, data: b.TempDir(), logs: &testenv.LogBuffer{}}
	tokenFile := filepath.Join(b.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("bench-token-"+id), 0o600); err != nil {
		b.Fatal(err)
	}
	listen := testenv.FreeAddr(b)
	s.api = &apiclient.Client{Base: "http://" + listen, Token: "bench-token-" + id}
	// FLEET_BENCH_PROFILES=DIR: each serve writes its CPU profile there
	// (DIR/{test}-{id}.prof, at its end), to see what the CPU went to,
	// and its allocations (.allocs), what the garbage collector follows.
	if dir := os.Getenv("FLEET_BENCH_PROFILES"); dir != "" {
		name := strings.NewReplacer("/", "-", " ", "-").Replace(b.Name())
		args = append(args, "--cpu-profile", filepath.Join(dir, name+"-"+id+".prof"), "--alloc-profile", filepath.Join(dir, name+"-"+id+".allocs"))
	}
	s.cmd = exec.Command(bin, append([]string{"serve", "--data", s.data, "--controller-id", id, "--http-listen", listen,
		"--api-token-file", tokenFile, "--log-level", "warn"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	// FLEET_BENCH_SERVE_ENV="K=V …": added to each serve's environment
	// only (GOMEMLIMIT=512MiB, say), not to the publishers'.
	if extra := strings.Fields(os.Getenv("FLEET_BENCH_SERVE_ENV")); len(extra) > 0 {
		s.cmd.Env = append(os.Environ(), extra...)
	}
	if err := s.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(testenv.Timeout):
			s.cmd.Process.Kill()
			<-exited
		}
		if b.Failed() {
			b.Logf("serve %s log:\n%s", id, s.logs.String())
		}
	})
	testenv.Eventually(b, "serve "+id+" answers on "+listen, func() bool {
		_, err := s.replica()
		return err == nil
	})
	return s
}

func (s *serveProc) replica() (api.Replica, error) {
	var r api.Replica
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.api.Do(ctx, "GET", "/v1/replica", nil, &r, nil)
	return r, err
}

// provisionBench provisions the gateways bench/gw-1 … at the first
// replica and returns their password (Mosquitto's test configuration lets
// anyone in; the cloud still records them).
func provisionBench(b *testing.B, procs []costProc) string {
	var p api.Provisioned
	req := api.SimulatedRequest{Tenant: costTenant, Prefix: "gw-", Count: costGateways}
	if err := procs[firstReplica(procs)].replica.api.Do(context.Background(), "POST", "/v1/simulated", req, &p, nil); err != nil {
		b.Fatalf("provision: %v", err)
	}
	return p.Password
}

func firstReplica(procs []costProc) int {
	for i, p := range procs {
		if p.replica != nil {
			return i
		}
	}
	return -1
}

// connectGateways connects gateways bench/gw-1 … as the agent does
// (persistent session, a death as Will, its command topics subscribed)
// and publishes each one's birth, 64 at a time.
func connectGateways(b *testing.B, brokerURL, password string) []*paho.Client {
	u, err := url.Parse(brokerURL)
	if err != nil {
		b.Fatal(err)
	}
	gws := make([]*paho.Client, costGateways)
	errs := make(chan error, costGateways)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range gws {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := connectGateway(u.Host, fmt.Sprintf("gw-%d", i+1), password, i+1)
			gws[i] = c
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	b.Cleanup(func() {
		var wg sync.WaitGroup
		for _, c := range gws {
			if c != nil {
				wg.Go(func() { c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
			}
		}
		wg.Wait()
	})
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return gws
}

func connectGateway(addr, id, password string, i int) (*paho.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	user := costTenant + "/" + id
	c := paho.NewClient(paho.ClientConfig{ClientID: user, Conn: packets.NewThreadSafeConn(bufferedConn{Conn: conn, r: bufio.NewReaderSize(conn, 4<<10)})})
	death, _ := proto.Marshal(&fleetv1.Death{GatewayId: id, Tenant: costTenant, Session: 1, Reason: fleetv1.Death_CONNECTION_LOST})
	expiry := uint32(7 * 24 * 3600)
	// paho makes a channel of Receive Maximum slots for what it receives
	// (65,535 unless told: 512 KiB of pointers each, which this process's
	// garbage collector scanned for 10,000 gateways, 5 GiB, and which made
	// the publishers take two cores while silent). These gateways receive
	// nothing.
	recvMax := uint16(16)
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: user, KeepAlive: 60, Username: user, UsernameFlag: true, Password: []byte(password), PasswordFlag: true,
		Properties:     &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax},
		WillMessage:    &paho.WillMessage{Topic: topic.Default().Death(costTenant, id), Payload: death, QoS: 1, Retain: true},
		WillProperties: &paho.WillProperties{ContentType: "application/x-protobuf"}})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", user, err)
	}
	if ca.ReasonCode != 0 {
		return nil, fmt.Errorf("connect %s: reason %d", user, ca.ReasonCode)
	}
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic.Default().CommandFilter(costTenant, id), QoS: 1}}}); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", user, err)
	}
	birth, err := proto.Marshal(benchBirth(i))
	if err != nil {
		return nil, err
	}
	if _, err := c.Publish(ctx, &paho.Publish{QoS: 1, Retain: true, Topic: topic.Default().Birth(costTenant, id), Payload: birth,
		Properties: &paho.PublishProperties{ContentType: "application/x-protobuf"}}); err != nil {
		return nil, fmt.Errorf("birth %s: %w", user, err)
	}
	return c, nil
}

// bufferedConn reads through a buffer: paho reads a packet's header a
// byte at a time, one system call each, which would make the publishers
// cost more than the agents they stand for.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// costPayloads are the statuses each gateway publishes in turn: a pull's
// progress, then RUNNING, as protobuf.
func costPayloads(b *testing.B) [][]byte {
	n := costStatuses / costGateways
	out := make([][]byte, n)
	for k := range out {
		st := &fleetv1.DeploymentStatus{Name: "web", Revision: 4, Phase: fleetv1.DeploymentStatus_PULLING, Image: "registry.example.com/team/web:4",
			PullProgress: &fleetv1.PullProgress{BytesDone: uint64(k+1) << 20, BytesTotal: uint64(n) << 20}, UpdatedAt: timestamppb.Now()}
		if k == n-1 {
			st.Phase, st.PullProgress = fleetv1.DeploymentStatus_RUNNING, nil
		}
		var err error
		if out[k], err = proto.Marshal(st); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// publishStatuses has each gateway publish its statuses in order, QoS 1
// retained as the agent does, costInFlight gateways at a time.
func publishStatuses(b *testing.B, gws []*paho.Client, payloads [][]byte) {
	var wg sync.WaitGroup
	errs := make(chan error, costInFlight)
	for w := range costInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range payloads {
				for g := w; g < len(gws); g += costInFlight {
					_, err := gws[g].Publish(context.Background(), &paho.Publish{QoS: 1, Retain: true,
						Topic: topic.Default().Status(costTenant, fmt.Sprintf("gw-%d", g+1), "web"), Payload: p,
						Properties: &paho.PublishProperties{ContentType: "application/x-protobuf"}})
					if err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("publish: %v", err)
	}
}

// costSample is the replicas' counters and every process's CPU time at
// one moment.
type costSample struct {
	at      time.Time
	applied []uint64
	cpu     []time.Duration
	machine time.Duration // all CPUs' busy time
}

// awaitApplied polls the replicas' counters until each has applied want
// messages more than base, or all together have and none moved for half a
// second; it returns the sample at which the last counter moved. It fails
// when nothing moves for 5 s short of want.
func awaitApplied(b *testing.B, procs []costProc, base []uint64, want uint64) costSample {
	b.Helper()
	last := sampleCost(b, procs)
	for {
		time.Sleep(10 * time.Millisecond)
		s := sampleCost(b, procs)
		var sum uint64
		all, moved := true, false
		for i, p := range procs {
			if p.replica == nil {
				continue
			}
			d := s.applied[i] - base[i]
			sum += d
			all = all && d >= want
			moved = moved || s.applied[i] != last.applied[i]
		}
		if moved {
			last = s
		}
		quiet := s.at.Sub(last.at)
		switch {
		case all:
			return s
		case sum >= want && quiet > 500*time.Millisecond:
			return last
		case quiet > 5*time.Second:
			b.Fatalf("replicas applied %v (from %v); want %d more in all; none for 5 s", s.applied, base, want)
		}
	}
}

func sampleCost(b *testing.B, procs []costProc) costSample {
	s := costSample{at: time.Now()}
	var err error
	if s.machine, err = machineBusy(); err != nil {
		b.Fatal(err)
	}
	for _, p := range procs {
		var n uint64
		if p.replica != nil {
			r, err := p.replica.replica()
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			n = r.Ingested
		}
		cpu, err := cpuTime(p.pid)
		if err != nil {
			b.Fatal(err)
		}
		s.applied = append(s.applied, n)
		s.cpu = append(s.cpu, cpu)
	}
	return s
}

// cpuTime is the user and system CPU time of process pid so far, all its
// threads.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, may hold spaces: count from after it.
	i := strings.LastIndexByte(string(raw), ')')
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("/proc/" + strconv.Itoa(pid) + "/stat: too few fields")
	}
	var ticks int64
	for _, s := range f[11:13] { // utime, stime: fields 14 and 15
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// peakRSS is process pid's peak resident memory so far, in MiB (VmHWM
// of /proc/PID/status).
func peakRSS(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatalf("/proc/%d/status: VmHWM %q: %v", pid, v, err)
			}
			return kib / 1024
		}
	}
	b.Fatalf("/proc/%d/status: no VmHWM", pid)
	return 0
}

// machineBusy is the time all CPUs spent on anything but idle and I/O
// wait, from the first line of /proc/stat.
func machineBusy() (time.Duration, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: first line %q", line)
	}
	var ticks int64
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is in user already
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// rate is messages a second: through the whole run, or in a backlog run
// as the replicas applied them once resumed.
func (r costRun) rate() float64 {
	if r.drain > 0 {
		return float64(r.sent) / r.drain.Seconds()
	}
	return float64(r.sent) / r.elapsed.Seconds()
}

// usPerMsg is process i's CPU per message sent.
func (r costRun) usPerMsg(i int) float64 {
	return float64(r.cpu[i].Microseconds()) / float64(r.sent)
}

// busy is the share of the two cores in use during the run, by anything.
func (r costRun) busy() float64 {
	all := r.others
	for _, c := range r.cpu {
		all += c
	}
	return all.Seconds() / r.elapsed.Seconds() / float64(runtime.NumCPU())
}

func (r costRun) report(b *testing.B) {
	b.ReportMetric(r.rate(), "msgs/s")
	for i, p := range r.procs {
		unit := strings.Fields(p.name)[0]
		if p.replica != nil {
			unit = p.replica.id
			b.ReportMetric(100*float64(r.applied[i])/float64(r.sent), unit+"-share-%")
			b.ReportMetric(r.peak[i], unit+"-peak-MiB")
		}
		b.ReportMetric(r.usPerMsg(i), unit+"-us/msg")
	}
}

// printCostTable prints every run: per process its CPU over the statuses,
// per message sent and, for a replica, per message it applied with the
// messages a second a core that gives, and its share of a core idle.
func printCostTable(rows []costRun) {
	if len(rows) == 0 {
		return
	}
	fmt.Printf("\ningest cost: %d gateways, %d statuses (%d in flight), CPU from /proc/PID/stat\n", costGateways, costStatuses, costInFlight)
	fmt.Printf("%-17s %-34s %7s %6s %8s %7s %21s %6s %8s\n", "setup", "process", "msgs/s", "cpu s", "µs/sent", "share", "µs/applied (/s/core)", "idle", "peak MiB")
	for _, r := range rows {
		for i, p := range r.procs {
			rate, share, perApplied := "", "", ""
			if i == 0 {
				rate = fmt.Sprintf("%.0f", r.rate())
			}
			if p.replica != nil && r.applied[i] > 0 {
				share = fmt.Sprintf("%.1f%%", 100*float64(r.applied[i])/float64(r.sent))
				us := float64(r.cpu[i].Microseconds()) / float64(r.applied[i])
				perApplied = fmt.Sprintf("%.1f (%.0f)", us, 1e6/us)
			}
			fmt.Printf("%-17s %-34s %7s %6.2f %8.1f %7s %21s %5.1f%% %8.0f\n", r.setup, p.name, rate, r.cpu[i].Seconds(), r.usPerMsg(i), share, perApplied, 100*r.idle[i], r.peak[i])
		}
		fmt.Printf("%-17s %-34s %7s %6.2f   (%.1f s; the machine's cores %.0f%% busy)\n", r.setup, "other processes", "", r.others.Seconds(), r.elapsed.Seconds(), 100*r.busy())
	}
}
