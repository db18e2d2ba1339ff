package scenarios

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	dockerclient "github.com/docker/docker/client"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func deploy(spec *fleetv1.DeploymentSpec) *fleetv1.Command {
	return &fleetv1.Command{Id: fmt.Sprintf("deploy-%s-%d-%d", spec.GetName(), spec.GetRevision(), time.Now().UnixNano()),
		IssuedAt: timestamppb.Now(), Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: spec}}}
}

func ref(verb topic.Verb, name string) *fleetv1.Command {
	id := fmt.Sprintf("%s-%s-%d", verb, name, time.Now().UnixNano())
	r := &fleetv1.DeploymentRef{Name: name}
	c := &fleetv1.Command{Id: id}
	switch verb {
	case topic.Stop:
		c.Body = &fleetv1.Command_Stop{Stop: r}
	case topic.Start:
		c.Body = &fleetv1.Command_Start{Start: r}
	case topic.Restart:
		c.Body = &fleetv1.Command_Restart{Restart: r}
	case topic.Remove:
		c.Body = &fleetv1.Command_Remove{Remove: r}
	}
	return c
}

// sendLong sends a command and waits up to two minutes for its final reply.
func sendLong(tb testing.TB, c *mqttclienttest.Recorder, gw string, cmd *fleetv1.Command) *fleetv1.Reply {
	tb.Helper()
	return sendWithin(tb, c, gw, cmd, 2*time.Minute)
}

// deployEnv is a real agent on the local Docker Engine, a registry for its
// images and a recording console; containers and images are removed at
// cleanup.
type deployEnv struct {
	cli   *dockerclient.Client
	reg   *testimage.Registry
	gw    string
	owner string
	rec   *mqttclienttest.Recorder
	agent *testenv.Agent
	birth *fleetv1.Birth
}

func newDeployEnv(tb testing.TB, prefix string, broker func(testing.TB) testenv.Broker, agentArgs ...string) deployEnv {
	tb.Helper()
	e := deployEnv{cli: testenv.DockerClient(tb), reg: testimage.NewRegistry(tb), gw: fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)}
	e.owner = tenant + "/" + e.gw
	testenv.RemoveOwned(tb, e.cli, e.owner, e.reg.Host+"/")
	b := broker(tb)
	e.rec = mqttclienttest.NewRecorder(tb, b.URL(), codec.Protobuf)
	e.agent = testenv.StartAgent(tb, b.URL(), tenant, e.gw, agentArgs...)
	e.birth = birthOf(e.rec.Await(tb, "birth", 1, mqttclienttest.Kind(topic.Birth, e.gw)))
	return e
}

func TestDeploymentLifecycle(t *testing.T) {
	e := newDeployEnv(t, "gw-dep", brokertest.Embedded)
	cli, reg, gw, owner, rec, agent, birth := e.cli, e.reg, e.gw, e.owner, e.rec, e.agent, e.birth
	if e := birth.GetEngine(); !e.GetReachable() || e.GetName() != "docker" || e.GetVersion() == "" {
		t.Errorf("birth engine = %v, want a reachable docker with its version", e)
	}

	v1ref, v1digest := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "1", Env: map[string]string{"MESSAGE": "one"}})
	v2ref, _ := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "2", Env: map[string]string{"MESSAGE": "two"}})
	crashRef, _ := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "crash", Env: map[string]string{"MODE": "exit", "EXIT_CODE": "3", "DELAY": "500ms"}})
	spec := func(rev int64, image string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "web", Revision: rev, Image: image, NetworkMode: "none",
			Env:           map[string]string{"MODE": "serve"},
			RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_UNLESS_STOPPED}}
	}
	managed := func() []container.Summary {
		t.Helper()
		cs, err := cli.ContainerList(context.Background(), container.ListOptions{All: true})
		if err != nil {
			t.Fatal(err)
		}
		var out []container.Summary
		for _, c := range cs {
			if c.Labels["io.fleet-agent.owner"] == owner {
				out = append(out, c)
			}
		}
		return out
	}
	lastStatus := func() *fleetv1.DeploymentStatus {
		all := rec.All(mqttclienttest.Kind(topic.Status, gw))
		if len(all) == 0 || all[len(all)-1].Message == nil {
			return nil
		}
		return all[len(all)-1].Message.(*fleetv1.DeploymentStatus)
	}

	// Deploy revision 1: ACCEPTED, then SUCCEEDED with the container running.
	r := sendLong(t, rec, gw, deploy(spec(1, v1ref)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING || r.GetStatus().GetImageDigest() != v1digest {
		t.Fatalf("deploy r1 reply = %v, want SUCCEEDED RUNNING with digest %s", r, v1digest)
	}
	if cs := managed(); len(cs) != 1 || cs[0].State != "running" || cs[0].Labels["io.fleet-agent.revision"] != "1" {
		t.Fatalf("containers after r1 = %+v, want one running at revision 1", cs)
	}
	testenv.Eventually(t, "retained RUNNING status", func() bool {
		st := lastStatus()
		return st != nil && st.GetPhase() == fleetv1.DeploymentStatus_RUNNING && st.GetRevision() == 1
	})

	// The same revision again: a no-op. A lower one: STALE_REVISION.
	if r := sendLong(t, rec, gw, deploy(spec(1, v1ref))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("same revision again = %v, want SUCCEEDED", r)
	}
	// Policy: privileged is denied by default.
	priv := spec(5, v1ref)
	priv.Privileged = true
	if r := sendLong(t, rec, gw, deploy(priv)); r.GetCode() != fleetv1.Reply_POLICY_DENIED || r.GetField() != "deploy.spec.privileged" {
		t.Errorf("privileged deploy = %v, want REJECTED POLICY_DENIED on deploy.spec.privileged", r)
	}

	// Update to revision 2, stop-first: the new image is pulled while the
	// old container still runs (the engine's events show the order).
	r1ID := managed()[0].ID
	evCtx, stopEvents := context.WithCancel(context.Background())
	defer stopEvents()
	evs, _ := cli.Events(evCtx, events.ListOptions{Since: time.Now().Format(time.RFC3339Nano)})
	if r := sendLong(t, rec, gw, deploy(spec(2, v2ref))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy r2 = %v", r)
	}
	var order []string
	for len(order) < 2 {
		select {
		case m := <-evs:
			switch {
			case m.Type == events.ImageEventType && m.Action == events.ActionPull && m.Actor.ID == v2ref,
				// Pull mode AGENT: the engine pulls the verified image
				// from the agent on loopback and tags it with its name.
				m.Type == events.ImageEventType && m.Action == events.ActionTag && m.Actor.Attributes["name"] == v2ref:
				order = append(order, "pull r2 image")
			case m.Type == events.ContainerEventType && m.Action == events.ActionDie && m.Actor.ID == r1ID:
				order = append(order, "r1 container died")
			}
		case <-time.After(testenv.Timeout):
			t.Fatalf("engine events seen: %v; want the r2 pull and the r1 stop", order)
		}
	}
	stopEvents()
	if order[0] != "pull r2 image" {
		t.Errorf("engine events in order %v: the old container stopped before the new image was pulled", order)
	}
	if cs := managed(); len(cs) != 1 || cs[0].Labels["io.fleet-agent.revision"] != "2" || cs[0].State != "running" {
		t.Fatalf("containers after r2 = %+v, want only revision 2 running", cs)
	}
	if r := sendLong(t, rec, gw, deploy(spec(1, v1ref))); r.GetCode() != fleetv1.Reply_STALE_REVISION {
		t.Errorf("lower revision = %v, want STALE_REVISION", r)
	}

	// Revision 3 crashes within minReadySeconds: rolled back to revision 2.
	s3 := spec(3, crashRef)
	s3.Env = map[string]string{}
	s3.Update = &fleetv1.Update{MinReadySeconds: 2, ProgressDeadlineSeconds: 30}
	s3.RestartPolicy = &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_NO}
	r = sendLong(t, rec, gw, deploy(s3))
	if r.GetResult() != fleetv1.Reply_FAILED || r.GetCode() != fleetv1.Reply_UNHEALTHY || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_ROLLED_BACK {
		t.Fatalf("deploy crashing r3 = %v, want FAILED UNHEALTHY ROLLED_BACK", r)
	}
	if cs := managed(); len(cs) != 1 || cs[0].Labels["io.fleet-agent.revision"] != "2" || cs[0].State != "running" {
		t.Fatalf("containers after rollback = %+v, want revision 2 running again", cs)
	}
	rec.Await(t, "rollback event", 1, func(m mqttclient.Received) bool {
		e, ok := m.Message.(*fleetv1.Event)
		return ok && m.Topic.Gateway == gw && e.GetKind() == "deployment.rolled-back"
	})

	// Revision 4 (the good image again), start-first: the old container
	// runs until the new one is ready, then only the new one remains.
	s4 := spec(4, v2ref)
	s4.Update = &fleetv1.Update{Strategy: fleetv1.Update_START_FIRST}
	if r := sendLong(t, rec, gw, deploy(s4)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy r4 = %v", r)
	}
	if cs := managed(); len(cs) != 1 || cs[0].Labels["io.fleet-agent.revision"] != "4" || cs[0].State != "running" {
		t.Fatalf("containers after r4 = %+v, want only revision 4 running", cs)
	}

	// Stop: stays stopped across an agent restart; start brings it back.
	if r := sendLong(t, rec, gw, ref(topic.Stop, "web")); r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_STOPPED {
		t.Fatalf("stop = %v", r)
	}
	unmanaged, err := cli.ContainerCreate(context.Background(), &container.Config{Image: v1ref, Labels: map[string]string{"purpose": "unmanaged-" + gw}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), unmanaged.ID, container.RemoveOptions{Force: true}) })
	if code := agent.Term(t); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	agent.Start(t)
	rec.Await(t, "birth after restart", 2, mqttclienttest.Kind(topic.Birth, gw))
	testenv.Eventually(t, "status STOPPED after restart", func() bool {
		st := lastStatus()
		return st != nil && st.GetPhase() == fleetv1.DeploymentStatus_STOPPED && st.GetRevision() == 4
	})
	if cs := managed(); len(cs) != 1 || cs[0].State == "running" {
		t.Fatalf("containers after restart = %+v, want the stopped one", cs)
	}
	if _, err := cli.ContainerInspect(context.Background(), unmanaged.ID); err != nil {
		t.Errorf("unmanaged container touched: %v", err)
	}
	if r := sendLong(t, rec, gw, ref(topic.Start, "web")); r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("start = %v", r)
	}
	startedAt := func(id string) string {
		ci, err := cli.ContainerInspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return ci.State.StartedAt
	}
	c := managed()[0]
	before := startedAt(c.ID)
	if r := sendLong(t, rec, gw, ref(topic.Restart, "web")); r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("restart = %v", r)
	}
	if after := startedAt(c.ID); after <= before {
		t.Errorf("restart: container started at %s, before at %s; want a later start of the same container", after, before)
	}

	// Deleted behind the agent's back: recreated on the agent's next start.
	agent.Kill()
	for _, c := range managed() {
		cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	}
	agent.Start(t)
	testenv.Eventually(t, "container recreated", func() bool {
		cs := managed()
		return len(cs) == 1 && cs[0].State == "running" && cs[0].Labels["io.fleet-agent.revision"] == "4"
	})

	// Remove: container gone, retained status cleared.
	if r := sendLong(t, rec, gw, ref(topic.Remove, "web")); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("remove = %v", r)
	}
	if cs := managed(); len(cs) != 0 {
		t.Errorf("containers after remove = %+v", cs)
	}
	testenv.Eventually(t, "status cleared", func() bool {
		all := rec.All(mqttclienttest.Kind(topic.Status, gw))
		return len(all) > 0 && len(all[len(all)-1].Payload) == 0
	})
	if r := sendLong(t, rec, gw, ref(topic.Stop, "web")); r.GetCode() != fleetv1.Reply_NOT_FOUND {
		t.Errorf("stop after remove = %v, want NOT_FOUND", r)
	}
}

func TestLiveStatusFromEngineEvents(t *testing.T) {
	e := newDeployEnv(t, "gw-live", brokertest.Embedded)
	reg, gw, rec := e.reg, e.gw, e.rec
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})

	tests := []struct {
		name  string
		env   map[string]string
		res   *fleetv1.Resources
		check func(st *fleetv1.DeploymentStatus) bool
		want  string
	}{
		{"crash", map[string]string{"MODE": "exit", "EXIT_CODE": "7", "DELAY": "2s"}, nil,
			func(st *fleetv1.DeploymentStatus) bool {
				return st.GetPhase() == fleetv1.DeploymentStatus_EXITED && st.GetExitCode() == 7 && st.GetCode() == fleetv1.Reply_UNHEALTHY
			}, "EXITED with code 7"},
		{"oom", map[string]string{"MODE": "oom", "DELAY": "1s"}, &fleetv1.Resources{MemoryBytes: 32 << 20},
			func(st *fleetv1.DeploymentStatus) bool {
				return st.GetPhase() == fleetv1.DeploymentStatus_EXITED && st.GetOomKilled()
			}, "EXITED with oomKilled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := &fleetv1.DeploymentSpec{Name: tt.name, Revision: 1, Image: img, NetworkMode: "none", Env: tt.env, Resources: tt.res,
				RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_NO}}
			r := sendLong(t, rec, gw, deploy(spec))
			if r.GetResult() != fleetv1.Reply_SUCCEEDED {
				t.Fatalf("deploy = %v", r)
			}
			if tt.res != nil {
				requireEngineOOM(t, &e, gw, tt.name)
			}
			st := rec.Await(t, "status "+tt.want, 1, func(m mqttclient.Received) bool {
				st, ok := m.Message.(*fleetv1.DeploymentStatus)
				return ok && m.Topic.Gateway == gw && m.Topic.Deployment == tt.name && tt.check(st)
			})
			t.Logf("status: %v", st.Message)
		})
	}
}

// requireEngineOOM waits for the deployment's container to exit, then
// skips the test unless Docker says the kernel killed it for memory
// (State.OOMKilled): under make test's load containerd once missed the
// oom_kill of a container that was gone at once (exit 137, OOMKilled
// false, no oom event), and the agent can report only what the engine
// knows. When Docker knows it, the agent must report it.
func requireEngineOOM(t *testing.T, e *deployEnv, gw, deployment string) {
	t.Helper()
	st := e.rec.Await(t, "status EXITED", 1, func(m mqttclient.Received) bool {
		st, ok := m.Message.(*fleetv1.DeploymentStatus)
		return ok && m.Topic.Gateway == gw && m.Topic.Deployment == deployment && st.GetPhase() == fleetv1.DeploymentStatus_EXITED
	}).Message.(*fleetv1.DeploymentStatus)
	id := st.GetContainerId()
	// Docker records an OOM event that comes after the exit as it comes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := e.cli.ContainerInspect(context.Background(), id)
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if c.State.OOMKilled {
			return
		}
		if time.Now().After(deadline) {
			t.Skipf("Docker does not say container %s was OOM-killed (exit %d, State.OOMKilled false): the engine missed the kernel's oom_kill, so there is nothing for the agent to report", id, c.State.ExitCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMovedTagIsPulledAgain(t *testing.T) {
	e := newDeployEnv(t, "gw-tag", brokertest.Embedded)
	cli, reg, gw, rec := e.cli, e.reg, e.gw, e.rec

	ref, first := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "latest", Env: map[string]string{"MESSAGE": "first"}})
	spec := &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: ref, NetworkMode: "none", PullPolicy: fleetv1.Pull_IF_NOT_PRESENT}
	if r := sendLong(t, rec, gw, deploy(spec)); r.GetStatus().GetImageDigest() != first {
		t.Fatalf("r1 = %v, want digest %s", r, first)
	}
	_, second := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "latest", Env: map[string]string{"MESSAGE": "second"}})
	spec.Revision = 2
	r := sendLong(t, rec, gw, deploy(spec))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != second {
		t.Fatalf("r2 after the tag moved = %v, want digest %s", r, second)
	}
	ci, err := cli.ContainerInspect(context.Background(), r.GetStatus().GetContainerId())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range ci.Config.Env {
		found = found || e == "MESSAGE=second"
	}
	if !found {
		t.Errorf("container env %v: runs the old image", ci.Config.Env)
	}
}

func TestAgentKilledMidDeploy(t *testing.T) {
	e := newDeployEnv(t, "gw-kill", brokertest.Embedded)
	cli, reg, gw, owner, rec, agent := e.cli, e.reg, e.gw, e.owner, e.rec, e.agent
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})

	spec := &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: img, NetworkMode: "none",
		Update: &fleetv1.Update{MinReadySeconds: 4, ProgressDeadlineSeconds: 60}}
	cmd := deploy(spec)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := rec.Send(ctx, tenant, gw, cmd)
	if err != nil {
		t.Fatal(err)
	}
	// Kill the agent while the new container is in its minReadySeconds.
	rec.Await(t, "STARTING status", 1, func(m mqttclient.Received) bool {
		st, ok := m.Message.(*fleetv1.DeploymentStatus)
		return ok && m.Topic.Gateway == gw && st.GetPhase() == fleetv1.DeploymentStatus_STARTING
	})
	agent.Kill()
	agent.Start(t)

	// The journaled command resumes and its final reply reaches the console.
	r, err := req.Final(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("final reply after the kill = %v, want SUCCEEDED RUNNING", r)
	}
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	var mine []string
	for _, c := range cs {
		if c.Labels["io.fleet-agent.owner"] == owner {
			mine = append(mine, c.Names[0]+" "+c.State+" r"+c.Labels["io.fleet-agent.revision"])
		}
	}
	if len(mine) != 1 || mine[0] != "/"+agent.ResourcePrefix+"-app-r1 running r1" {
		t.Errorf("containers = %v, want exactly one, running, at revision 1", mine)
	}
}

func TestEngineUnreachableReportedAndRecovered(t *testing.T) {
	proxy := testenv.NewSocketProxy(t)
	e := newDeployEnv(t, "gw-engine", brokertest.Embedded, "--docker-host", "unix://"+proxy.Path)
	reg, gw, rec := e.reg, e.gw, e.rec
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	if r := sendLong(t, rec, gw, deploy(&fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: img, NetworkMode: "none"})); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy = %v", r)
	}

	proxy.Stop()
	rec.Await(t, "status saying the engine is unreachable", 1, func(m mqttclient.Received) bool {
		st, ok := m.Message.(*fleetv1.DeploymentStatus)
		return ok && m.Topic.Gateway == gw && st.GetCode() == fleetv1.Reply_RUNTIME_UNAVAILABLE
	})
	// Still connected: it answers, and its birth says the engine is away.
	// The birth may come after the reply: wait for it, not for the last
	// one recorded.
	before := len(rec.All(mqttclienttest.Kind(topic.Birth, gw)))
	if r := send(t, rec, gw, rebirth(fmt.Sprint("rb-", time.Now().UnixNano()))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("rebirth while the engine is away = %v", r)
	}
	reborn := rec.Await(t, "the rebirth's birth", before+1, mqttclienttest.Kind(topic.Birth, gw))
	if e := birthOf(reborn).GetEngine(); e.GetReachable() || e.GetError() == "" {
		t.Errorf("birth engine while away = %v, want unreachable with the error", e)
	}
	r := send(t, rec, gw, ref(topic.Stop, "app"))
	if r.GetCode() != fleetv1.Reply_RUNTIME_UNAVAILABLE || !strings.Contains(r.GetMessage(), "recorded as stopped") {
		t.Errorf("stop while the engine is away = %v, want RUNTIME_UNAVAILABLE", r)
	}

	proxy.Start(t)
	rec.Await(t, "engine.available event", 1, func(m mqttclient.Received) bool {
		e, ok := m.Message.(*fleetv1.Event)
		return ok && m.Topic.Gateway == gw && e.GetKind() == "engine.available"
	})
	// The stop recorded while the engine was away is applied now.
	testenv.Eventually(t, "status STOPPED once the engine is back", func() bool {
		all := rec.All(func(m mqttclient.Received) bool { return mqttclienttest.Kind(topic.Status, gw)(m) && m.Message != nil })
		st := all[len(all)-1].Message.(*fleetv1.DeploymentStatus)
		return st.GetCode() == fleetv1.Reply_OK && st.GetPhase() == fleetv1.DeploymentStatus_STOPPED
	})
}

func TestHealthGatedDeploy(t *testing.T) {
	e := newDeployEnv(t, "gw-health", brokertest.Embedded)
	reg, gw, rec := e.reg, e.gw, e.rec
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	// Margins for a loaded machine, where Docker's exec of a probe can take
	// over a second and the first probe can come before the server listens:
	// failures in the start period do not count (a success ends it), and a
	// probe has 10 s. MODE=unhealthy is judged after the start period, at
	// the second failure.
	health := &fleetv1.HealthCheck{Test: []string{"CMD", "/app", "probe"}, Interval: durationpb.New(300 * time.Millisecond),
		Timeout: durationpb.New(10 * time.Second), Retries: 2, StartPeriod: durationpb.New(5 * time.Second)}
	spec := func(rev int64, mode string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "app", Revision: rev, Image: img, NetworkMode: "none", HealthCheck: health,
			Env: map[string]string{"MODE": mode}, Update: &fleetv1.Update{ProgressDeadlineSeconds: 30}}
	}
	r := sendLong(t, rec, gw, deploy(spec(1, "serve")))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetHealth() != fleetv1.HealthCheck_HEALTHY {
		t.Fatalf("healthy deploy = %v, want SUCCEEDED with health HEALTHY", r)
	}
	r = sendLong(t, rec, gw, deploy(spec(2, "unhealthy")))
	if r.GetResult() != fleetv1.Reply_FAILED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_ROLLED_BACK ||
		!strings.Contains(r.GetMessage(), "health check") {
		t.Fatalf("unhealthy deploy = %v, want FAILED, ROLLED_BACK, naming the health check", r)
	}
}
