package engine_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// newDocker returns the engine for a unique owner, and removes every
// container of that owner, and the network, at cleanup.
func newDocker(t *testing.T) (*engine.Docker, *client.Client, string) {
	t.Helper()
	raw := testenv.DockerClient(t)
	owner := fmt.Sprintf("test/%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), time.Now().UnixNano())
	d, err := engine.NewDocker("", owner, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs, _ := d.List(context.Background())
		for _, c := range cs {
			d.Remove(context.Background(), c.ID)
		}
		d.Close()
	})
	return d, raw, owner
}

// hostPort is a free TCP port on 127.0.0.1.
func hostPort(t *testing.T) uint32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port)
}

// TestDockerVolumes: a volume someone else created (here one binding the
// host's /etc, as `docker volume create -o type=none -o o=bind -o
// device=/etc` makes) is refused unless allowed; a missing one is created
// with the owner label and mounted.
func TestDockerVolumes(t *testing.T) {
	suffix := fmt.Sprint(time.Now().UnixNano())
	foreign, own := "fleet-test-hostetc-"+suffix, "fleet-test-own-"+suffix
	// Registered first, so it runs after the containers are removed.
	volumes := testenv.DockerClient(t)
	t.Cleanup(func() {
		volumes.VolumeRemove(context.Background(), foreign, true)
		volumes.VolumeRemove(context.Background(), own, true)
	})
	d, raw, owner := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := testimage.NewRegistry(t)
	ref, _ := reg.Push(t, testimage.Spec{Repo: "team/vol", Tag: "1"})
	t.Cleanup(func() { d.RemoveImage(context.Background(), ref) })
	if err := d.Pull(ctx, ref, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.VolumeCreate(ctx, volume.CreateOptions{Name: foreign, Driver: "local",
		DriverOpts: map[string]string{"type": "none", "o": "bind", "device": "/etc"}}); err != nil {
		t.Fatal(err)
	}
	spec := func(rev int64, vol string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "vol", Revision: rev, Image: ref, NetworkMode: "none",
			Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_TMPFS, Target: "/t"}, {Type: fleetv1.Mount_VOLUME, Source: vol, Target: "/v"}}}
	}

	_, err := d.Create(ctx, engine.ContainerName("vol", 1), spec(1, foreign), engine.Host{})
	if errdefs.Code(err) != fleetv1.Reply_POLICY_DENIED || errdefs.Field(err) != "spec.mounts[1].source" || !strings.Contains(err.Error(), "--allow-volume") {
		t.Errorf("Create with a foreign volume = %v, want POLICY_DENIED on spec.mounts[1].source naming --allow-volume", err)
	}
	if cs, _ := d.List(ctx); len(cs) != 0 {
		t.Errorf("containers after the refusal = %+v, want none", cs)
	}
	if _, err := d.Create(ctx, engine.ContainerName("vol", 2), spec(2, foreign), engine.Host{ForeignVolumes: []string{foreign}}); err != nil {
		t.Errorf("Create with an allowed foreign volume = %v, want success", err)
	}
	if _, err := d.Create(ctx, engine.ContainerName("vol", 3), spec(3, own), engine.Host{}); err != nil {
		t.Fatalf("Create with a new volume = %v", err)
	}
	v, err := raw.VolumeInspect(ctx, own)
	if err != nil || v.Labels[engine.LabelOwner] != owner {
		t.Errorf("volume %s = %+v, %v; want it created with owner label %s", own, v.Labels, err, owner)
	}
	if _, err := d.Create(ctx, engine.ContainerName("vol", 4), spec(4, own), engine.Host{}); err != nil {
		t.Errorf("Create with the agent's own volume again = %v, want success", err)
	}
}

func TestDockerLifecycle(t *testing.T) {
	d, raw, owner := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := testimage.NewRegistry(t)
	ref, _ := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "1", Env: map[string]string{"MESSAGE": "hi"}})
	t.Cleanup(func() { d.RemoveImage(context.Background(), ref) })

	netName := "fleet-test-" + fmt.Sprint(time.Now().UnixNano())
	if _, err := raw.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.NetworkRemove(context.Background(), netName) })

	var progress []int64
	if err := d.Pull(ctx, ref, "", func(done, total int64) { progress = append(progress, done) }); err != nil {
		t.Fatal(err)
	}
	if _, _, found, err := d.Image(ctx, ref); err != nil || !found {
		t.Fatalf("Image(%s) found=%v err=%v after pull", ref, found, err)
	}
	if size, err := d.ImageSize(ctx, ref, ""); err != nil || size < 1<<20 {
		t.Errorf("ImageSize = %d, %v; want the size of the testapp layer (over 1 MiB)", size, err)
	}
	if free, err := d.FreeSpace(ctx); err != nil || free == 0 {
		t.Errorf("FreeSpace = %d, %v", free, err)
	}

	spec := &fleetv1.DeploymentSpec{
		Name: "web", Revision: 2, Image: ref, NetworkMode: netName,
		Env:   map[string]string{"MODE": "serve", "PORT": "8080"},
		Ports: []*fleetv1.Port{{ContainerPort: 8080, HostPort: 0, HostIp: "127.0.0.1"}, {ContainerPort: 9090, Protocol: "udp", HostIp: "::1"}, {ContainerPort: 7070, HostPort: hostPort(t)}},
		Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_TMPFS, Target: "/scratch"},
			{Type: fleetv1.Mount_BIND, Source: "/link-the-policy-resolved", Target: "/data", ReadOnly: true}},
		Resources:     &fleetv1.Resources{MemoryBytes: 64 << 20, Cpus: 0.5},
		RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_ON_FAILURE, MaxRetries: 3},
		Labels:        map[string]string{"app": "web"},
		StopTimeout:   durationpb.New(3 * time.Second),
		CapDrop:       []string{"NET_RAW"},
	}
	bindDir := t.TempDir()
	host := engine.Host{MountSources: []string{"", bindDir}, PublishHostIP: "127.0.0.1", TmpfsSize: 8 << 20}
	id, err := d.Create(ctx, engine.ContainerName("web", 2), spec, host)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "container running", func() bool {
		s, err := d.Inspect(ctx, id)
		return err == nil && s.Running
	})

	ci, err := raw.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"name", ci.Name, "/fleet-web-r2"},
		{"owner label", ci.Config.Labels[engine.LabelOwner], owner},
		{"deployment label", ci.Config.Labels[engine.LabelDeployment], "web"},
		{"revision label", ci.Config.Labels[engine.LabelRevision], "2"},
		{"spec hash label", ci.Config.Labels[engine.LabelSpecHash], engine.SpecHash(spec)},
		{"user label", ci.Config.Labels["app"], "web"},
		{"memory", ci.HostConfig.Memory, int64(64 << 20)},
		{"nano cpus", ci.HostConfig.NanoCPUs, int64(5e8)},
		{"restart policy", string(ci.HostConfig.RestartPolicy.Name), "on-failure"},
		{"restart retries", ci.HostConfig.RestartPolicy.MaximumRetryCount, 3},
		{"log driver", ci.HostConfig.LogConfig.Type, "json-file"},
		{"log max-size", ci.HostConfig.LogConfig.Config["max-size"], "10m"},
		{"log max-file", ci.HostConfig.LogConfig.Config["max-file"], "3"},
		{"network", string(ci.HostConfig.NetworkMode), netName},
		{"port binding ip", ci.HostConfig.PortBindings["8080/tcp"][0].HostIP, "127.0.0.1"},
		{"port without host ip on the policy's address", ci.HostConfig.PortBindings["7070/tcp"][0].HostIP, "127.0.0.1"},
		{"port with host ip", ci.HostConfig.PortBindings["9090/udp"][0].HostIP, "::1"},
		{"tmpfs mount", ci.HostConfig.Mounts[0].Target, "/scratch"},
		{"tmpfs size", ci.HostConfig.Mounts[0].TmpfsOptions.SizeBytes, int64(8 << 20)},
		{"bind source as resolved", ci.HostConfig.Mounts[1].Source, bindDir},
		{"stop timeout", *ci.Config.StopTimeout, 3},
		{"cap drop", strings.TrimPrefix(fmt.Sprint(ci.HostConfig.CapDrop), "[CAP_"), "NET_RAW]"},
		{"env MODE", hasEnv(ci.Config.Env, "MODE=serve"), true},
		{"image env kept", hasEnv(ci.Config.Env, "MESSAGE=hi"), true},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}

	cs, err := d.List(ctx)
	if err != nil || len(cs) != 1 || cs[0].Deployment != "web" || cs[0].Revision != 2 || !cs[0].Running {
		t.Errorf("List = %+v, %v; want the one running container of this owner", cs, err)
	}
	timeout := time.Second
	if err := d.Stop(ctx, id, &timeout); err != nil {
		t.Fatal(err)
	}
	if s, _ := d.Inspect(ctx, id); s.Running {
		t.Error("still running after Stop")
	}
	if err := d.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(ctx, id); err != nil {
		t.Errorf("second Remove = %v, want nil for a missing container", err)
	}
	if cs, _ := d.List(ctx); len(cs) != 0 {
		t.Errorf("List after Remove = %+v", cs)
	}
}

func TestDockerPullErrors(t *testing.T) {
	d, _, _ := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := testimage.NewRegistry(t)
	tests := []struct {
		name string
		ref  string
		want error
	}{
		{"missing tag", reg.Host + "/team/none:1", errdefs.ErrNotFound},
		{"unreachable registry", testenv.FreeAddr(t) + "/team/web:1", errdefs.ErrRegistryUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Pull(ctx, tt.ref, "", nil)
			if got := errdefs.Code(err); got != errdefs.Code(tt.want) {
				t.Errorf("Pull(%s) = %v (code %v), want code %v", tt.ref, err, got, errdefs.Code(tt.want))
			}
		})
	}
}

func hasEnv(env []string, kv string) bool {
	for _, e := range env {
		if e == kv {
			return true
		}
	}
	return false
}

// Subscribing to the event stream refreshes the engine's facts.
func TestDockerFacts(t *testing.T) {
	d, _, _ := newDocker(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() { d.Facts().Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if e := d.Facts().Get(ctx); e.GetReachable() {
		t.Errorf("facts before any query = %v, want not reachable", e)
	}
	d.Events(ctx)
	testenv.Eventually(t, "facts reachable after subscribing to events", func() bool { return d.Facts().Get(ctx).GetReachable() })
	if e := d.Facts().Get(ctx); e.GetName() != "docker" || e.GetVersion() == "" || e.GetApiVersion() == "" {
		t.Errorf("facts = %v, want docker with its version and API version", e)
	}
}
