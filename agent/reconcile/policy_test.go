package reconcile_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// symlinkTree lays out an allowed directory holding links that point
// outside it (absolute, relative with .., chained, dangling) and inside it,
// as a first deploy's container could have written them into a bind mount.
func symlinkTree(t *testing.T) (allowed, outside string) {
	t.Helper()
	root := t.TempDir()
	allowed, outside = filepath.Join(root, "data"), filepath.Join(root, "secret")
	for _, d := range []string{filepath.Join(allowed, "app"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "passwd"), []byte("root:x:0:0"), 0o600); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"hostetc":  outside,                     // absolute, out
		"up":       "../secret",                 // relative .., out
		"chain":    "hostetc",                   // chain: in the dir, then out
		"nested":   "app/../../secret",          // .. after a real dir
		"dangling": filepath.Join(outside, "x"), // to a path that does not exist yet
		"devmem":   "/dev/null",                 // a device outside
		"inside":   "app",                       // stays inside
		"loop":     "loop",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(allowed, name)); err != nil {
			t.Fatal(err)
		}
	}
	return allowed, outside
}

func TestPolicySymlinks(t *testing.T) {
	allowed, _ := symlinkTree(t)
	in := func(p string) string { return filepath.Join(allowed, p) }
	bind := func(src string) func(*fleetv1.DeploymentSpec) {
		return func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_TMPFS, Target: "/tmp"}, {Type: fleetv1.Mount_BIND, Source: src, Target: "/data"}}
		}
	}
	device := func(src string) func(*fleetv1.DeploymentSpec) {
		return func(s *fleetv1.DeploymentSpec) { s.Devices = []*fleetv1.Device{{HostPath: src}} }
	}
	tests := []struct {
		name      string
		mutate    func(*fleetv1.DeploymentSpec)
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"absolute link out", bind(in("hostetc")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"below an absolute link out", bind(in("hostetc/passwd")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"relative .. link out", bind(in("up")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"chain of links out", bind(in("chain")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"link with .. after a dir", bind(in("nested")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"dangling link out", bind(in("dangling")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"below a dangling link", bind(in("dangling/y")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"link loop", bind(in("loop")), fleetv1.Reply_POLICY_DENIED, "spec.mounts[1].source"},
		{"device link out", device(in("devmem")), fleetv1.Reply_POLICY_DENIED, "spec.devices[0].hostPath"},
		{"link inside", bind(in("inside")), fleetv1.Reply_OK, ""},
		{"real dir", bind(in("app")), fleetv1.Reply_OK, ""},
		{"not there yet", bind(in("new/sub")), fleetv1.Reply_OK, ""},
	}
	h := newHarness(t, reconcile.Policy{AllowedHostPaths: []string{allowed}}, false)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := good(i)
			h.fake.Publish(spec.GetImage(), "v1")
			tt.mutate(spec)
			_, err := h.deploy(t, spec)
			if errdefs.Code(err) != tt.wantCode || errdefs.Field(err) != tt.wantField {
				t.Errorf("Deploy = %v (code %v, field %q), want %v on %q", err, errdefs.Code(err), errdefs.Field(err), tt.wantCode, tt.wantField)
			}
		})
	}
}

func good(i int) *fleetv1.DeploymentSpec {
	return &fleetv1.DeploymentSpec{Name: "p" + string(rune('a'+i)), Revision: 1, Image: "registry.test/web:1"}
}

// TestPolicyDefaults: what the zero policy refuses besides privileged
// containers, the host network, capabilities and host paths.
func TestPolicyDefaults(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(*fleetv1.DeploymentSpec)
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"another container's network", func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "container:dockerd-sidecar" }, fleetv1.Reply_POLICY_DENIED, "spec.networkMode"},
		{"a named network not listed", func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "macvlan-lan" }, fleetv1.Reply_POLICY_DENIED, "spec.networkMode"},
		{"syslog to an address", func(s *fleetv1.DeploymentSpec) {
			s.Logging = &fleetv1.Logging{Driver: "syslog", Options: map[string]string{"syslog-address": "tcp://10.0.0.1:514"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.logging.driver"},
		{"awslogs with the daemon's credentials", func(s *fleetv1.DeploymentSpec) {
			s.Logging = &fleetv1.Logging{Driver: "awslogs", Options: map[string]string{"awslogs-group": "x"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.logging.driver"},
		{"port on every address", func(s *fleetv1.DeploymentSpec) {
			s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080, HostIp: "0.0.0.0"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.ports[0].hostIp"},
		{"port on every v6 address", func(s *fleetv1.DeploymentSpec) {
			s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080, HostIp: "::"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.ports[0].hostIp"},
		{"host ip not an address", func(s *fleetv1.DeploymentSpec) {
			s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080, HostIp: "eth0"}}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.ports[0].hostIp"},
		{"volume name a path", func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "/etc", Target: "/v"}}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.mounts[0].source"},
		{"bridge", func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "bridge" }, fleetv1.Reply_OK, ""},
		{"none", func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "none" }, fleetv1.Reply_OK, ""},
		{"json-file with options", func(s *fleetv1.DeploymentSpec) {
			s.Logging = &fleetv1.Logging{Driver: "json-file", Options: map[string]string{"max-size": "1m"}}
		}, fleetv1.Reply_OK, ""},
		{"local", func(s *fleetv1.DeploymentSpec) { s.Logging = &fleetv1.Logging{Driver: "local"} }, fleetv1.Reply_OK, ""},
		{"port on loopback", func(s *fleetv1.DeploymentSpec) {
			s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080, HostIp: "127.0.0.1"}}
		}, fleetv1.Reply_OK, ""},
		{"port without host ip", func(s *fleetv1.DeploymentSpec) { s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080}} }, fleetv1.Reply_OK, ""},
		{"tmpfs", func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_TMPFS, Target: "/run"}}
		}, fleetv1.Reply_OK, ""},
	}
	h := newHarness(t, reconcile.Policy{}, false)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := good(i)
			h.fake.Publish(spec.GetImage(), "v1")
			tt.mutate(spec)
			_, err := h.deploy(t, spec)
			if errdefs.Code(err) != tt.wantCode || errdefs.Field(err) != tt.wantField {
				t.Errorf("Deploy = %v (code %v, field %q), want %v on %q", err, errdefs.Code(err), errdefs.Field(err), tt.wantCode, tt.wantField)
			}
		})
	}
}

// TestPolicyRecheckAtCreate: a bind source that becomes a link to outside
// between admission and creation (here: during the pull) is refused before
// the container is created.
func TestPolicyRecheckAtCreate(t *testing.T) {
	allowed, outside := symlinkTree(t)
	src := filepath.Join(allowed, "app")
	h := newHarness(t, reconcile.Policy{AllowedHostPaths: []string{allowed}}, false)
	spec := good(0)
	h.fake.Publish(spec.GetImage(), "v1")
	spec.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: src, Target: "/data"}}
	h.fake.FailPull = func(context.Context, string) error {
		if err := os.Remove(src); err != nil {
			return err
		}
		return os.Symlink(outside, src)
	}
	_, err := h.deploy(t, spec)
	if errdefs.Code(err) != fleetv1.Reply_POLICY_DENIED || errdefs.Field(err) != "spec.mounts[0].source" {
		t.Errorf("Deploy = %v (code %v, field %q), want POLICY_DENIED on spec.mounts[0].source", err, errdefs.Code(err), errdefs.Field(err))
	}
	if _, ok := h.fake.HostOf(engine.ContainerName(spec.GetName(), 1)); ok {
		t.Error("a container was created; want none")
	}
}

// TestPolicyAllows: what the settings allow, and what the engine is given.
func TestPolicyAllows(t *testing.T) {
	allowed, _ := symlinkTree(t)
	policy := reconcile.Policy{
		AllowedHostPaths: []string{allowed}, AllowHostNetwork: true,
		AllowedNetworks: []string{"lan", "container:vpn"}, AllowedVolumes: []string{"shared"},
		AllowedLogDrivers: []string{"syslog"}, PublishHostIP: "192.0.2.1", AllowedPublishHostIPs: []string{"0.0.0.0"},
		TmpfsSize: 1 << 20,
	}
	tests := []struct {
		name      string
		policy    reconcile.Policy
		mutate    func(*fleetv1.DeploymentSpec)
		wantCode  fleetv1.Reply_Code
		wantField string
		wantHost  engine.Host
	}{
		{"listed network", policy, func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "lan" }, fleetv1.Reply_OK, "", engine.Host{}},
		{"host network", policy, func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "host" }, fleetv1.Reply_OK, "", engine.Host{}},
		{"listed container network", policy, func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "container:vpn" }, fleetv1.Reply_OK, "", engine.Host{}},
		{"other container network", policy, func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "container:db" }, fleetv1.Reply_POLICY_DENIED, "spec.networkMode", engine.Host{}},
		{"any container network", reconcile.Policy{AllowedNetworks: []string{"container:*"}}, func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "container:db" }, fleetv1.Reply_OK, "", engine.Host{}},
		{"listed log driver", policy, func(s *fleetv1.DeploymentSpec) { s.Logging = &fleetv1.Logging{Driver: "syslog"} }, fleetv1.Reply_OK, "", engine.Host{}},
		{"other log driver", policy, func(s *fleetv1.DeploymentSpec) { s.Logging = &fleetv1.Logging{Driver: "gelf"} }, fleetv1.Reply_POLICY_DENIED, "spec.logging.driver", engine.Host{}},
		{"listed host ip", policy, func(s *fleetv1.DeploymentSpec) { s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostIp: "0.0.0.0"}} }, fleetv1.Reply_OK, "", engine.Host{}},
		{"default host ip named", policy, func(s *fleetv1.DeploymentSpec) { s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostIp: "192.0.2.1"}} }, fleetv1.Reply_OK, "", engine.Host{}},
		{"loopback not listed", policy, func(s *fleetv1.DeploymentSpec) { s.Ports = []*fleetv1.Port{{ContainerPort: 80, HostIp: "127.0.0.1"}} }, fleetv1.Reply_POLICY_DENIED, "spec.ports[0].hostIp", engine.Host{}},
		{"listed foreign volume", policy, func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "shared", Target: "/v"}}
		}, fleetv1.Reply_OK, "", engine.Host{}},
		{"foreign volume", policy, func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "hostetc", Target: "/v"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.mounts[0].source", engine.Host{}},
		{"new volume", policy, func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "fresh", Target: "/v"}}
		}, fleetv1.Reply_OK, "", engine.Host{}},
		{"engine gets the resolved paths, address and tmpfs size", policy, func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_TMPFS, Target: "/t"}, {Type: fleetv1.Mount_BIND, Source: filepath.Join(allowed, "inside"), Target: "/d"}}
			s.Devices = []*fleetv1.Device{{HostPath: filepath.Join(allowed, "inside")}}
		}, fleetv1.Reply_OK, "", engine.Host{MountSources: []string{"", filepath.Join(allowed, "app")}, DeviceSources: []string{filepath.Join(allowed, "app")},
			PublishHostIP: "192.0.2.1", TmpfsSize: 1 << 20, ForeignVolumes: []string{"shared"}}},
		{"defaults given to the engine", reconcile.Policy{}, func(s *fleetv1.DeploymentSpec) {}, fleetv1.Reply_OK, "",
			engine.Host{PublishHostIP: "127.0.0.1", TmpfsSize: 64 << 20}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.policy, false)
			h.fake.AddVolume("hostetc", "")
			h.fake.AddVolume("shared", "")
			spec := good(i)
			h.fake.Publish(spec.GetImage(), "v1")
			tt.mutate(spec)
			_, err := h.deploy(t, spec)
			if errdefs.Code(err) != tt.wantCode || errdefs.Field(err) != tt.wantField {
				t.Fatalf("Deploy = %v (code %v, field %q), want %v on %q", err, errdefs.Code(err), errdefs.Field(err), tt.wantCode, tt.wantField)
			}
			if tt.wantHost.PublishHostIP == "" {
				return
			}
			got, _ := h.fake.HostOf(engine.ContainerName(spec.GetName(), 1))
			if diff := cmp.Diff(tt.wantHost, got); diff != "" {
				t.Errorf("engine host (-want +got):\n%s", diff)
			}
		})
	}
}
