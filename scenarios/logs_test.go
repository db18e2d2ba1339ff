package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// logsEnv is cloud-sim serve with two real agents on the local Docker
// Engine, each running a counter container (testapp's COUNTER_EVERY):
// gw a steady one with the default logs rate, rl a chatty one behind
// --logs-rate 200B/s; and the MQTT identity of a third gateway, x, that no
// agent uses (the attacker).
type logsEnv struct {
	c             *cloud
	tenant        string
	gw, rl, x     string
	agents        map[string]*testenv.Agent
	count, chatty string // the deployments
	long          string // on gw: a line of 20,000 bytes a second
	app           string // on gw: an application of two counters, a and b
	countImage    string
	xUser, xPass  string
	rate, burst   int64
	countEvery    time.Duration
	countStart    time.Time
}

const logsTenant = "logs"

func newLogsEnv(t *testing.T) *logsEnv {
	t.Helper()
	docker := testenv.DockerClient(t)
	run := time.Now().UnixNano() % 1e9
	e := &logsEnv{c: newCloud(t, simfleet.Config{}), tenant: logsTenant, rate: 200, burst: 16 << 10, countEvery: 100 * time.Millisecond,
		gw: fmt.Sprintf("lg-%d", run), rl: fmt.Sprintf("lr-%d", run), x: fmt.Sprintf("lx-%d", run),
		count: fmt.Sprintf("count-%d", run), chatty: fmt.Sprintf("chatty-%d", run), long: fmt.Sprintf("long-%d", run), app: fmt.Sprintf("app-%d", run), agents: map[string]*testenv.Agent{}}
	reg := testimage.NewRegistry(t)
	for _, gw := range []string{e.gw, e.rl} {
		testenv.RemoveOwned(t, docker, e.tenant+"/"+gw, reg.Host+"/")
	}
	e.agents[e.gw] = e.c.provisionAgent(t, e.tenant, e.gw)
	e.agents[e.rl] = e.c.provisionAgent(t, e.tenant, e.rl, "--logs-rate", fmt.Sprintf("%dB/s", e.rate), "--logs-burst", fmt.Sprintf("%dB", e.burst))
	var p api.Provisioned
	if err := e.c.api.Do(context.Background(), "POST", "/v1/gateways/"+e.tenant+"/"+e.x+"/provision", api.ProvisionRequest{}, &p, nil); err != nil {
		t.Fatal(err)
	}
	e.xUser, e.xPass = p.Username, p.Password

	countImg, _ := reg.Push(t, testimage.Spec{Repo: "logs/count", Tag: "1", Env: map[string]string{"COUNTER_EVERY": e.countEvery.String()}})
	// About 24 KB/s: the 16 KiB burst is gone within a second.
	chattyImg, _ := reg.Push(t, testimage.Spec{Repo: "logs/chatty", Tag: "1", Env: map[string]string{"COUNTER_EVERY": "5ms", "COUNTER_PAD": "100"}})
	longImg, _ := reg.Push(t, testimage.Spec{Repo: "logs/long", Tag: "1", Env: map[string]string{"COUNTER_EVERY": "500ms", "COUNTER_PAD": "20000"}})
	testenv.Eventually(t, "both agents online", func() bool {
		a, b := e.c.gateway(t, e.tenant, e.gw), e.c.gateway(t, e.tenant, e.rl)
		return a != nil && a.Online && b != nil && b.Online
	})
	type deployed struct {
		name string
		b    api.BatchView
		err  error
	}
	single := func(name, image string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: name, Revision: 1, Image: image, NetworkMode: "none"}
	}
	app := &fleetv1.DeploymentSpec{Name: e.app, Revision: 1, Services: map[string]*fleetv1.Service{
		"a": {Image: countImg, NetworkMode: "none"}, "b": {Image: countImg, NetworkMode: "none"}}}
	deployments := []struct {
		gw   string
		spec *fleetv1.DeploymentSpec
	}{{e.gw, single(e.count, countImg)}, {e.rl, single(e.chatty, chattyImg)}, {e.gw, single(e.long, longImg)}, {e.gw, app}}
	done := make(chan deployed, len(deployments))
	for _, d := range deployments {
		go func() {
			cmd := &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: d.spec}}}
			body, _ := protojson.Marshal(cmd)
			r := deployed{name: d.spec.GetName()}
			r.err = e.c.api.Do(context.Background(), "POST", "/v1/commands", api.CommandRequest{
				Target: api.Target{Tenant: e.tenant, Gateways: []string{d.gw}}, Command: body, Wait: "60s", SkipRegistryCheck: true}, &r.b, nil)
			done <- r
		}()
	}
	for range deployments {
		r := <-done
		if r.err != nil || !r.b.Done || r.b.Counts[api.StateSucceeded] != 1 {
			t.Fatalf("deploy %s: %+v, %v; want SUCCEEDED", r.name, r.b, r.err)
		}
	}
	e.countStart, e.countImage = time.Now(), countImg
	return e
}

// logEvent is one server-sent event of GET …/logs.
type logEvent struct {
	name    string
	line    api.LogLine
	dropped api.LogDropped
	end     api.LogEnd
}

// logsReader reads GET …/logs; cancel closes the request, as a client
// going away.
type logsReader struct {
	id     string // the logs command's id (X-Fleet-Command)
	events chan logEvent
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *logsEnv) openLogs(t *testing.T, gw, deployment string, q url.Values) *logsReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	path := e.c.APIURL + "/v1/gateways/" + e.tenant + "/" + gw + "/deployments/" + deployment + "/logs?" + q.Encode()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	req.Header.Set("Authorization", "Bearer "+e.c.APIToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %s %s %s", path, resp.Status, resp.Header.Get("Content-Type"), body)
	}
	r := &logsReader{id: resp.Header.Get("X-Fleet-Command"), events: make(chan logEvent, 1<<14), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer close(r.events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var ev logEvent
		for sc.Scan() {
			line := sc.Text()
			if name, ok := strings.CutPrefix(line, "event: "); ok {
				ev = logEvent{name: name}
				continue
			}
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok {
				continue
			}
			var into any
			switch ev.name {
			case "line":
				into = &ev.line
			case "dropped":
				into = &ev.dropped
			case "end":
				into = &ev.end
			}
			if into == nil || json.Unmarshal([]byte(data), into) != nil {
				continue
			}
			select {
			case r.events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// next is the stream's next event; ok false when it ended or timed out.
func (r *logsReader) next(within time.Duration) (logEvent, bool) {
	select {
	case ev, ok := <-r.events:
		return ev, ok
	case <-time.After(within):
		return logEvent{}, false
	}
}

// untilEnd collects the events up to and with the end event.
func (r *logsReader) untilEnd(t *testing.T) []logEvent {
	t.Helper()
	var evs []logEvent
	for {
		ev, ok := r.next(testenv.Timeout)
		if !ok {
			t.Fatalf("the stream stopped without an end event after %d events", len(evs))
		}
		evs = append(evs, ev)
		if ev.name == "end" {
			return evs
		}
	}
}

// counterNumber is n of testapp's line "count n".
func counterNumber(text string) (int, bool) {
	var n int
	_, err := fmt.Sscanf(text, "count %d", &n)
	return n, err == nil
}

// TestLogs reads real containers' output through cloud-sim's API and CLI
// from real agents: a tail, a follow the client's going away cancels on the
// gateway, a rate-limited stream whose drops are counted, and a gateway
// that tries to forge another gateway's chunks.
func TestLogs(t *testing.T) {
	start := time.Now()
	e := newLogsEnv(t)
	t.Logf("set up (cloud, 2 agents, 2 containers) in %v", time.Since(start).Round(time.Millisecond))
	for _, st := range []struct {
		name string
		f    func(*testing.T, *logsEnv)
	}{
		{"tail", testLogsTail},
		{"a line over the engine's 16 KiB", testLogsLongLine},
		{"since", testLogsSince},
		{"an application's services", testLogsServices},
		{"streams back to back", testLogsBackToBack},
		{"follow canceled by the client", testLogsFollowCanceled},
		{"cli", testLogsCLI},
		{"forged chunks refused", testLogsForged},
		{"rate limit", testLogsRateLimit},
		{"cli drop notices", testLogsCLIDropped},
		{"follow goes on across a restart", testLogsFollowRestart},
		{"follow ends when the container is replaced", testLogsContainerGone},
	} {
		t0 := time.Now()
		t.Run(st.name, func(t *testing.T) { st.f(t, e) })
		t.Logf("%s: %v", st.name, time.Since(t0).Round(time.Millisecond))
	}
}

// testLogsTail: tail=5 is exactly the last five lines, in order, each with
// its timestamp, stream and service, then the end COMPLETE.
func testLogsTail(t *testing.T, e *logsEnv) {
	testenv.Eventually(t, "the counter has printed 10 lines", func() bool {
		return time.Since(e.countStart) > 10*e.countEvery
	})
	asked := time.Now()
	evs := e.openLogs(t, e.gw, e.count, url.Values{"tail": {"5"}}).untilEnd(t)
	var nums []int
	for _, ev := range evs[:len(evs)-1] {
		n, ok := counterNumber(ev.line.Text)
		if ev.name != "line" || !ok || ev.line.Stream != "stdout" || ev.line.Service != e.count || ev.line.At.IsZero() || ev.line.At.After(time.Now()) {
			t.Fatalf("event %+v: want a line \"count N\" on stdout of service %s with its timestamp", ev, e.count)
		}
		nums = append(nums, n)
	}
	if end := evs[len(evs)-1].end; end.Reason != "COMPLETE" || end.Command == "" {
		t.Errorf("end = %+v, want COMPLETE with the command's id", end)
	}
	if len(nums) != 5 {
		t.Fatalf("tail=5 gave the lines %v", nums)
	}
	for i := 1; i < len(nums); i++ {
		if nums[i] != nums[i-1]+1 || !evs[i].line.At.After(evs[i-1].line.At) {
			t.Fatalf("lines %v (at %v, %v): want consecutive lines in order", nums, evs[i-1].line.At, evs[i].line.At)
		}
	}
	// The last of them was written about when we asked: the counter's
	// line at the time of asking, within a second of latency.
	if last := evs[4].line.At; last.Before(asked.Add(-time.Second)) {
		t.Errorf("the last line of the tail was written at %v, we asked at %v: not the last lines", last, asked)
	}
}

// testLogsFollowCanceled: a follow gets lines as they are written; closing
// the request makes the controller send cancel-logs, the agent ends the
// stream CANCELED and the logs command is SUCCEEDED.
func testLogsFollowCanceled(t *testing.T, e *logsEnv) {
	asked := time.Now()
	r := e.openLogs(t, e.gw, e.count, url.Values{"tail": {"1"}, "follow": {"true"}})
	first, live := -1, 0
	for live < 10 {
		ev, ok := r.next(testenv.Timeout)
		if !ok || ev.name != "line" {
			t.Fatalf("follow: event %+v (ok %v) after %d live lines; want lines", ev, ok, live)
		}
		n, _ := counterNumber(ev.line.Text)
		if first >= 0 && n != first+live+1 {
			t.Fatalf("follow: line %d after %d: want consecutive lines", n, first+live)
		}
		if first < 0 {
			first = n
			continue
		}
		if ev.line.At.Before(asked) {
			t.Fatalf("follow: a new line written at %v, before we asked at %v", ev.line.At, asked)
		}
		live++
	}
	r.cancel()
	<-r.done
	testenv.Eventually(t, "the logs command "+r.id+" SUCCEEDED after the client went away", func() bool {
		var cmd api.Command
		return e.c.api.Do(context.Background(), "GET", "/v1/commands/"+r.id, nil, &cmd, nil) == nil && cmd.State == api.StateSucceeded
	})
	// The cancel-logs reply and the stream's last reply go out one after
	// the other, in either order: the logs command may be SUCCEEDED while
	// cancel-logs is still PENDING (make test, once).
	var l struct {
		Commands []api.Command `json:"commands"`
	}
	testenv.Eventually(t, "one cancel-logs command to "+e.gw+", SUCCEEDED", func() bool {
		l.Commands = nil
		e.c.get(t, "/v1/commands?verb=cancel-logs&gateway="+e.gw, &l)
		if len(l.Commands) > 1 {
			t.Fatalf("cancel-logs commands to %s: %+v, want one", e.gw, l.Commands)
		}
		return len(l.Commands) == 1 && l.Commands[0].State == api.StateSucceeded
	})
	if !agentLogged(e, e.gw, "logs stream ended", "request_id="+r.id, "ended=CANCELED") {
		t.Errorf("the agent did not log the stream %s ended CANCELED", r.id)
	}
	if took := time.Since(asked); took > 10*time.Second {
		t.Errorf("the follow took %v to end: canceled, not its until", took)
	}
}

// agentLogged reports whether one line of gw's agent log holds all of want.
func agentLogged(e *logsEnv, gw string, want ...string) bool {
	for _, line := range strings.Split(e.agents[gw].Logs(), "\n") {
		all := true
		for _, w := range want {
			all = all && strings.Contains(line, w)
		}
		if all {
			return true
		}
	}
	return false
}

// testLogsCLI: `cloud-sim logs TENANT/GATEWAY DEPLOYMENT --tail 3`, the
// binary as shipped, prints three lines.
func testLogsCLI(t *testing.T, e *logsEnv) {
	bin := testenv.Binary(t, "cloud-sim")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "logs", e.tenant+"/"+e.gw, e.count, "--tail", "3", "--api", e.c.APIURL, "--data", e.c.dataDir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cloud-sim logs: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("cloud-sim logs %s/%s %s --tail 3:\n%s", e.tenant, e.gw, e.count, stdout.String())
	lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("cloud-sim logs --tail 3 printed %d lines:\n%s", len(lines), stdout.String())
	}
	prev := -1
	for _, l := range lines {
		// timestamp [service] stream text
		f := strings.Fields(l)
		if len(f) != 5 || f[1] != "["+e.count+"]" || f[2] != "stdout" || f[3] != "count" {
			t.Fatalf("line %q: want `timestamp [%s] stdout count N`", l, e.count)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Errorf("line %q: timestamp: %v", l, err)
		}
		n, _ := counterNumber(f[3] + " " + f[4])
		if prev >= 0 && n != prev+1 {
			t.Errorf("lines %q: want consecutive counts", lines)
		}
		prev = n
	}
	testLogsCLIFollow(t, e, bin)
}

// testLogsCLIFollow: `cloud-sim logs … -f` prints lines as they come;
// SIGINT (Ctrl-C) ends it with exit 0 and the follow on the gateway.
func testLogsCLIFollow(t *testing.T, e *logsEnv, bin string) {
	cmd := exec.Command(bin, "logs", e.tenant+"/"+e.gw, e.count, "-f", "--tail", "1", "--api", e.c.APIURL, "--data", e.c.dataDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for i := range 4 {
		select {
		case l, ok := <-lines:
			if !ok || !strings.Contains(l, " stdout count ") {
				t.Fatalf("cloud-sim logs -f: line %d %q (ok %v), stderr:\n%s", i, l, ok, stderr.String())
			}
		case <-time.After(testenv.Timeout):
			t.Fatalf("cloud-sim logs -f: %d lines within %v", i, testenv.Timeout)
		}
	}
	var newest struct {
		Commands []api.Command `json:"commands"`
	}
	e.c.get(t, "/v1/commands?verb=logs&limit=1&gateway="+e.gw, &newest)
	if len(newest.Commands) != 1 {
		t.Fatalf("logs commands to %s: %+v", e.gw, newest.Commands)
	}
	id := newest.Commands[0].ID
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cloud-sim logs -f after SIGINT: %v, want exit 0\nstderr:\n%s", err, stderr.String())
	}
	testenv.Eventually(t, "the CLI's follow "+id+" ended CANCELED on the gateway", func() bool {
		return agentLogged(e, e.gw, "logs stream ended", "request_id="+id, "ended=CANCELED")
	})
}

// testLogsForged: gateway x's identity publishing chunks on gateway gw's
// logs topic, while gw streams to the API, is refused by the broker, and
// the stream shows none of them; on its own logs topic it may publish.
func testLogsForged(t *testing.T, e *logsEnv) {
	r := e.openLogs(t, e.gw, e.count, url.Values{"tail": {"1"}, "follow": {"true"}})
	first, ok := r.next(testenv.Timeout)
	if !ok || first.name != "line" {
		t.Fatalf("follow: %+v, want a line", first)
	}
	m, _, err := dial(t, e.c.mqtt, e.xUser, e.xUser, e.xPass, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", e.xUser, err)
	}
	publish := func(name string, seq uint64) error {
		chunk := &fleetv1.LogChunk{RequestId: r.id, GatewayId: e.gw, Sequence: seq, Lines: []*fleetv1.LogLine{
			{Timestamp: timestamppb.Now(), Stream: fleetv1.LogLine_STDOUT, Service: e.count, Text: fmt.Sprintf("FORGED %d", seq)}}}
		b, _ := codec.Marshal(codec.Protobuf, chunk)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := m.c.Publish(ctx, &paho.Publish{Topic: name, QoS: 1, Payload: b,
			Properties: &paho.PublishProperties{ContentType: codec.Protobuf.ContentType()}})
		return err
	}
	if err := publish(topic.Default().LogStream(e.tenant, e.x, "c-own"), 0); err != nil {
		t.Fatalf("x on its own logs topic: %v", err)
	}
	// Sequences from 0: whichever the stream expects next is among them,
	// and would be shown in place of the agent's.
	victim := topic.Default().LogStream(e.tenant, e.gw, r.id)
	for seq := range uint64(30) {
		err := publish(victim, seq)
		if err == nil {
			t.Fatalf("x's PUBLISH of chunk %d on %s was acknowledged without an error", seq, victim)
		}
		if seq == 0 {
			t.Logf("refused: %v", err)
		}
	}
	// Two seconds of lines (two chunks at least) later, nothing forged.
	n0, _ := counterNumber(first.line.Text)
	for {
		ev, ok := r.next(testenv.Timeout)
		if !ok || ev.name != "line" {
			t.Fatalf("follow after the attack: %+v (ok %v), want lines", ev, ok)
		}
		if strings.Contains(ev.line.Text, "FORGED") {
			t.Fatalf("the stream shows a forged line: %+v", ev.line)
		}
		if n, _ := counterNumber(ev.line.Text); n >= n0+int(2*time.Second/e.countEvery) {
			break
		}
	}
}

// testLogsRateLimit: the chatty container behind --logs-rate 200B/s: the
// stream says lines were dropped, and what it sends stays within the
// budget (burst + rate × time).
func testLogsRateLimit(t *testing.T, e *logsEnv) {
	start := time.Now()
	evs := e.openLogs(t, e.rl, e.chatty, url.Values{"tail": {"1"}, "follow": {"true"}, "until": {"4s"}}).untilEnd(t)
	took := time.Since(start)
	var sent, dropped, droppedBytes uint64
	lines := 0
	for _, ev := range evs {
		switch ev.name {
		case "line":
			sent += uint64(len(ev.line.Text))
			lines++
		case "dropped":
			if ev.dropped.By != "gateway" {
				t.Errorf("dropped %+v: want by gateway", ev.dropped)
			}
			dropped += ev.dropped.Lines
			droppedBytes += ev.dropped.Bytes
		}
	}
	end := evs[len(evs)-1].end
	t.Logf("in %v: %d lines (%d B) sent, %d lines (%d B) dropped; end %+v", took.Round(time.Millisecond), lines, sent, dropped, droppedBytes, end)
	if end.Reason != "UNTIL" {
		t.Errorf("end = %+v, want UNTIL", end)
	}
	if dropped == 0 || droppedBytes == 0 {
		t.Errorf("no dropped event with counts: %d lines, %d bytes", dropped, droppedBytes)
	}
	budget := float64(e.burst) + float64(e.rate)*took.Seconds()
	if float64(sent) > 1.1*budget {
		t.Errorf("sent %d bytes in %v: over the budget %.0f (burst %d + %d B/s)", sent, took, budget, e.burst, e.rate)
	}
	if sent < uint64(e.burst)/2 {
		t.Errorf("sent %d bytes: want the burst (%d) to pass at least in half", sent, e.burst)
	}
}

// testLogsContainerGone: a follow of a deployment whose container a new
// revision replaces ends CONTAINER_GONE.
func testLogsContainerGone(t *testing.T, e *logsEnv) {
	r := e.openLogs(t, e.gw, e.count, url.Values{"tail": {"1"}, "follow": {"true"}})
	if ev, ok := r.next(testenv.Timeout); !ok || ev.name != "line" {
		t.Fatalf("follow: %+v, want a line", ev)
	}
	cmd := &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{
		Name: e.count, Revision: 2, Image: e.countImage, NetworkMode: "none"}}}}
	if b := e.c.sendUnchecked(t, api.Target{Tenant: e.tenant, Gateways: []string{e.gw}}, cmd, "60s"); !b.Done || b.Counts[api.StateSucceeded] != 1 {
		t.Fatalf("deploy revision 2: %+v", b)
	}
	evs := r.untilEnd(t)
	if end := evs[len(evs)-1].end; end.Reason != "CONTAINER_GONE" {
		t.Errorf("end = %+v, want CONTAINER_GONE", end)
	}
}

// testLogsLongLine: the engine keeps a line longer than 16 KiB as partial
// messages, each with its own timestamp; the stream gives the line's text
// back whole, in LogLines of at most 16 KiB, with no timestamp inside.
func testLogsLongLine(t *testing.T, e *logsEnv) {
	testenv.Eventually(t, "two long lines written", func() bool { return time.Since(e.countStart) > 1500*time.Millisecond })
	// The engine's tail counts its messages, two a line: at most two
	// lines, 40 KB, within the default rate's burst.
	evs := e.openLogs(t, e.gw, e.long, url.Values{"tail": {"4"}}).untilEnd(t)
	var text strings.Builder
	for _, ev := range evs[:len(evs)-1] {
		if ev.name != "line" || len(ev.line.Text) > 16<<10 {
			t.Fatalf("event %s with %d bytes of text: want lines of at most 16 KiB", ev.name, len(ev.line.Text))
		}
		text.WriteString(ev.line.Text)
	}
	// Whole lines are "count N xxx…" (20,000 x); the first may be the end
	// of one.
	var whole int
	for i, l := range strings.Split(strings.ReplaceAll(text.String(), "count ", "\ncount "), "\n") {
		if i == 0 || l == "" {
			continue
		}
		pad := strings.TrimLeft(l[min(len(l), len("count 000001 ")):], "x")
		if _, ok := counterNumber(l); !ok || pad != "" || len(l) != len("count 000001 ")+20000 {
			t.Fatalf("line of %d bytes %.40q…, with %q: want count N and 20000 x, no more", len(l), l, strings.Trim(l[len("count 000001 "):], "x"))
		}
		whole++
	}
	if whole == 0 {
		t.Fatalf("no whole line in %d events", len(evs))
	}
}

// testLogsFollowRestart: a follow goes on when the deployment's container
// is restarted (the restart verb): the new process's lines (its counter
// starts again from 1) come after the old ones, none twice.
func testLogsFollowRestart(t *testing.T, e *logsEnv) {
	r := e.openLogs(t, e.gw, e.count, url.Values{"tail": {"1"}, "follow": {"true"}})
	if ev, ok := r.next(testenv.Timeout); !ok || ev.name != "line" {
		t.Fatalf("follow: %+v, want a line", ev)
	}
	restart := &fleetv1.Command{Body: &fleetv1.Command_Restart{Restart: &fleetv1.DeploymentRef{Name: e.count}}}
	restarted := make(chan *api.BatchView, 1)
	go func() {
		body, _ := protojson.Marshal(restart)
		var b api.BatchView
		_ = e.c.api.Do(context.Background(), "POST", "/v1/commands", api.CommandRequest{
			Target: api.Target{Tenant: e.tenant, Gateways: []string{e.gw}}, Command: body, Wait: "60s"}, &b, nil)
		restarted <- &b
	}()
	var last time.Time
	prev, again := -1, 0
	for again < 5 {
		ev, ok := r.next(testenv.Timeout)
		if !ok || ev.name != "line" {
			t.Fatalf("follow across the restart: %+v (ok %v) after %d lines of the new process", ev, ok, again)
		}
		n, _ := counterNumber(ev.line.Text)
		if !ev.line.At.After(last) {
			t.Fatalf("line %q at %v after one at %v: a line twice, or out of order", ev.line.Text, ev.line.At, last)
		}
		switch {
		case n == 1 && prev > 1, again > 0 && n == prev+1:
			again++
		case again > 0 || n != prev+1 && prev >= 0:
			t.Fatalf("line %d after %d: want the counter to go on, or start again from 1", n, prev)
		}
		last, prev = ev.line.At, n
	}
	if b := <-restarted; !b.Done || b.Counts[api.StateSucceeded] != 1 {
		t.Fatalf("restart: %+v", b)
	}
}

// testLogsSince: since=1s is the lines of the last second, every one.
func testLogsSince(t *testing.T, e *logsEnv) {
	since := time.Now().Add(-time.Second)
	evs := e.openLogs(t, e.gw, e.count, url.Values{"since": {since.Format(time.RFC3339Nano)}}).untilEnd(t)
	lines := evs[:len(evs)-1]
	for _, ev := range lines {
		if ev.name != "line" || ev.line.At.Before(since) {
			t.Fatalf("event %+v: want lines written since %v", ev, since)
		}
	}
	// 10 lines a second, give or take the time the request took.
	if len(lines) < 8 || len(lines) > 20 {
		t.Errorf("since 1s ago: %d lines, want about 10", len(lines))
	}
}

// testLogsServices: an application's logs are its services' lines, each
// named; service=b is b's alone.
func testLogsServices(t *testing.T, e *logsEnv) {
	count := func(q url.Values) map[string]int {
		evs := e.openLogs(t, e.gw, e.app, q).untilEnd(t)
		got := map[string]int{}
		for _, ev := range evs[:len(evs)-1] {
			if _, ok := counterNumber(ev.line.Text); !ok {
				t.Fatalf("event %+v: want a counter line", ev)
			}
			got[ev.line.Service]++
		}
		if end := evs[len(evs)-1].end; end.Reason != "COMPLETE" {
			t.Errorf("end %+v, want COMPLETE", end)
		}
		return got
	}
	if got := count(url.Values{"tail": {"3"}, "service": {"b"}}); len(got) != 1 || got["b"] != 3 {
		t.Errorf("service=b tail=3: lines by service %v, want 3 of b", got)
	}
	if got := count(url.Values{"tail": {"3"}}); len(got) != 2 || got["a"] == 0 || got["b"] == 0 {
		t.Errorf("tail=3: lines by service %v, want lines of a and b", got)
	}
}

// testLogsCLIDropped: `cloud-sim logs -f` of the rate-limited chatty
// container tells on stderr where lines were dropped, and exits 0 at
// --until.
func testLogsCLIDropped(t *testing.T, e *logsEnv) {
	bin := testenv.Binary(t, "cloud-sim")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "logs", e.tenant+"/"+e.rl, e.chatty, "-f", "--tail", "1", "--until", "2s", "--api", e.c.APIURL, "--data", e.c.dataDir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cloud-sim logs -f --until 2s: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("stderr of cloud-sim logs %s/%s %s -f --until 2s:\n%s", e.tenant, e.rl, e.chatty, stderr.String())
	if !strings.Contains(stderr.String(), "dropped here by the gateway's rate limit") {
		t.Errorf("stderr does not tell of dropped lines:\n%s", stderr.String())
	}
	if !strings.Contains(stdout.String(), " ["+e.chatty+"] stdout count ") {
		t.Errorf("stdout has no line:\n%.500s", stdout.String())
	}
}

// testLogsBackToBack: 30 tail requests one after the other all stream.
// The controller subscribes to each stream's topic while the previous
// one's replies and chunks still come to it at QoS 1: the embedded broker
// refused the SUBSCRIBE (0x91, packet identifier in use) every few
// requests, a 500, until mqttclient tried it again.
func testLogsBackToBack(t *testing.T, e *logsEnv) {
	for i := range 30 {
		evs := e.openLogs(t, e.gw, e.count, url.Values{"tail": {"1"}}).untilEnd(t)
		if len(evs) != 2 || evs[1].end.Reason != "COMPLETE" {
			t.Fatalf("request %d: %+v, want a line and the end COMPLETE", i, evs)
		}
	}
}
