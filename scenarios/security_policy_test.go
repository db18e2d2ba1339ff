package scenarios

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestSecurityPolicy performs the local-policy attacks of issue 12 (items
// 8 and 9) on a real agent and Docker Engine: a first deploy writes a
// symlink to the host's /etc into its allowed bind mount and a second one
// tries to mount it; then another container's network, a volume someone
// else created binding /etc, a log driver that ships logs off the gateway
// and a port on every address. Each is refused, naming the field, and
// creates nothing; a legitimate deploy still runs, with its port on
// 127.0.0.1, its tmpfs sized and its volume labelled as the agent's.
func TestSecurityPolicy(t *testing.T) {
	data := t.TempDir()
	suffix := fmt.Sprint(time.Now().UnixNano())
	foreignVol, ownVol := "fleet-test-hostetc-"+suffix, "fleet-test-own-"+suffix
	// Registered before the agent's containers' cleanup, so it runs after.
	volumes := testenv.DockerClient(t)
	t.Cleanup(func() {
		volumes.VolumeRemove(context.Background(), foreignVol, true)
		volumes.VolumeRemove(context.Background(), ownVol, true)
	})
	e := newDeployEnv(t, "gw-pol", brokertest.Embedded, "--allow-host-path", data)
	ctx := context.Background()
	img, _ := e.reg.Push(t, testimage.Spec{Repo: "team/pol", Tag: "1", Env: map[string]string{"MODE": "serve"}})
	spec := func(name string, mutate func(*fleetv1.DeploymentSpec)) *fleetv1.DeploymentSpec {
		s := &fleetv1.DeploymentSpec{Name: name, Revision: 1, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_IF_NOT_PRESENT}
		mutate(s)
		return s
	}
	containersOf := func(deployment string) []container.Summary {
		t.Helper()
		cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
			filters.Arg("label", "io.fleet-agent.owner="+e.owner), filters.Arg("label", "io.fleet-agent.deployment="+deployment))})
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	refused := func(t *testing.T, s *fleetv1.DeploymentSpec, field, setting string) {
		t.Helper()
		r := sendLong(t, e.rec, e.gw, deploy(s))
		if r.GetCode() != fleetv1.Reply_POLICY_DENIED || r.GetField() != field || !strings.Contains(r.GetMessage(), setting) {
			t.Errorf("deploy %s = %v, want POLICY_DENIED on %s naming %s", s.GetName(), r, field, setting)
		}
		if cs := containersOf(s.GetName()); len(cs) != 0 {
			t.Errorf("containers of %s after the refusal = %d, want none", s.GetName(), len(cs))
		}
	}

	// Item 8: the first deploy is allowed, and its container makes
	// data/hostetc a link to the host's /etc.
	link := filepath.Join(data, "hostetc")
	writer := spec("writer", func(s *fleetv1.DeploymentSpec) {
		s.Env = map[string]string{"SYMLINK": "/data/hostetc=/etc"}
		s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: data, Target: "/data"}}
	})
	if r := sendLong(t, e.rec, e.gw, deploy(writer)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy writer = %v, want SUCCEEDED", r)
	}
	testenv.Eventually(t, "the container's link in the allowed directory", func() bool {
		target, err := os.Readlink(link)
		return err == nil && target == "/etc"
	})
	t.Run("bind mount through a link out", func(t *testing.T) {
		refused(t, spec("reader", func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: link, Target: "/host-etc", ReadOnly: true}}
		}), "deploy.spec.mounts[0].source", "--allow-host-path")
	})
	t.Run("device through a link out", func(t *testing.T) {
		refused(t, spec("device", func(s *fleetv1.DeploymentSpec) {
			s.Devices = []*fleetv1.Device{{HostPath: filepath.Join(link, "hostname")}}
		}), "deploy.spec.devices[0].hostPath", "--allow-host-path")
	})

	// Item 9.
	t.Run("another container's network", func(t *testing.T) {
		refused(t, spec("joiner", func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "container:fleet-writer-r1" }),
			"deploy.spec.networkMode", "--allow-network")
	})
	t.Run("log driver off the gateway", func(t *testing.T) {
		refused(t, spec("syslog", func(s *fleetv1.DeploymentSpec) {
			s.Logging = &fleetv1.Logging{Driver: "syslog", Options: map[string]string{"syslog-address": "udp://192.0.2.1:514"}}
		}), "deploy.spec.logging.driver", "--allow-log-driver")
	})
	t.Run("port on every address", func(t *testing.T) {
		refused(t, spec("wide", func(s *fleetv1.DeploymentSpec) {
			s.NetworkMode = ""
			s.Ports = []*fleetv1.Port{{ContainerPort: 8080, HostPort: freePort(t), HostIp: "0.0.0.0"}}
		}), "deploy.spec.ports[0].hostIp", "--allow-publish-host-ip")
	})
	t.Run("volume someone else created", func(t *testing.T) {
		if _, err := e.cli.VolumeCreate(ctx, volume.CreateOptions{Name: foreignVol, Driver: "local",
			DriverOpts: map[string]string{"type": "none", "o": "bind", "device": "/etc"}}); err != nil {
			t.Fatal(err)
		}
		refused(t, spec("foreign", func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: foreignVol, Target: "/v"}}
		}), "deploy.spec.mounts[0].source", "--allow-volume")
	})

	t.Run("legitimate deploy", func(t *testing.T) {
		vol := ownVol
		port := freePort(t)
		s := spec("legit", func(s *fleetv1.DeploymentSpec) {
			s.NetworkMode = "bridge"
			s.Ports = []*fleetv1.Port{{ContainerPort: 8080, HostPort: port}}
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_TMPFS, Target: "/scratch"},
				{Type: fleetv1.Mount_VOLUME, Source: vol, Target: "/v"},
				{Type: fleetv1.Mount_BIND, Source: filepath.Join(data, "app"), Target: "/data"}}
			s.Logging = &fleetv1.Logging{Driver: "local"}
		})
		if err := os.Mkdir(filepath.Join(data, "app"), 0o755); err != nil {
			t.Fatal(err)
		}
		if r := sendLong(t, e.rec, e.gw, deploy(s)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
			t.Fatalf("deploy legit = %v, want SUCCEEDED", r)
		}
		cs := containersOf("legit")
		if len(cs) != 1 {
			t.Fatalf("containers of legit = %d, want 1", len(cs))
		}
		ci, err := e.cli.ContainerInspect(ctx, cs[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if b := ci.HostConfig.PortBindings["8080/tcp"]; len(b) != 1 || b[0].HostIP != "127.0.0.1" {
			t.Errorf("port bindings = %+v, want 8080/tcp on 127.0.0.1 only", b)
		}
		if m := ci.HostConfig.Mounts[0]; m.TmpfsOptions == nil || m.TmpfsOptions.SizeBytes != 64<<20 {
			t.Errorf("tmpfs mount = %+v, want a size of 64 MiB", m)
		}
		if v, err := e.cli.VolumeInspect(ctx, vol); err != nil || v.Labels["io.fleet-agent.owner"] != e.owner {
			t.Errorf("volume %s labels = %v, %v; want the agent's owner label", vol, v.Labels, err)
		}
	})
}

// freePort is a TCP port free on this host now.
func freePort(t *testing.T) uint32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port)
}
