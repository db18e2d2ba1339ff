package compose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// shop is the three-service application of the tests: a database with a
// health check, a one-shot migration, and a web service that waits for
// both; a named volume and an internal network.
const shop = `
name: shop
services:
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD}
    volumes:
      - data:/var/lib/postgresql/data
    networks: [back]
    healthcheck:
      test: ["CMD", "pg_isready", "-U", "postgres"]
      interval: 5s
      timeout: 3s
      retries: 5
      start_period: 10s
    restart: unless-stopped
  migrate:
    image: registry.example.com/shop/migrate:1.4
    command: migrate --to latest
    networks: [back]
    depends_on:
      db:
        condition: service_healthy
    restart: "no"
  web:
    image: registry.example.com/shop/web:1.4
    ports: ["8080:80"]
    environment: [MODE=prod, DB_HOST=db]
    networks: [back, front]
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
    deploy:
      resources:
        limits: {memory: 128m, cpus: "0.5"}
    stop_grace_period: 30s
    labels: {team: shop}
    pull_policy: always
volumes:
  data: {}
networks:
  back:
    internal: true
  front: {}
`

func TestTranslateShop(t *testing.T) {
	res, err := Translate(context.Background(), []byte(shop), Options{Revision: 3, Env: map[string]string{"DB_PASSWORD": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	want := &fleetv1.DeploymentSpec{
		Name: "shop", Revision: 3,
		Services: map[string]*fleetv1.Service{
			"db": {
				Image:         "postgres:16",
				Env:           map[string]string{"POSTGRES_PASSWORD": "s3cret"},
				Mounts:        []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "data", Target: "/var/lib/postgresql/data"}},
				Networks:      []string{"back"},
				RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_UNLESS_STOPPED},
				HealthCheck: &fleetv1.HealthCheck{Test: []string{"CMD", "pg_isready", "-U", "postgres"}, Interval: durationpb.New(5 * time.Second),
					Timeout: durationpb.New(3 * time.Second), Retries: 5, StartPeriod: durationpb.New(10 * time.Second)},
			},
			"migrate": {
				Image:         "registry.example.com/shop/migrate:1.4",
				Command:       []string{"migrate", "--to", "latest"},
				Networks:      []string{"back"},
				RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_NO},
				DependsOn:     []*fleetv1.Dependency{{Service: "db", Condition: fleetv1.Dependency_HEALTHY}},
			},
			"web": {
				Image:       "registry.example.com/shop/web:1.4",
				PullPolicy:  fleetv1.Pull_ALWAYS,
				Env:         map[string]string{"MODE": "prod", "DB_HOST": "db"},
				Ports:       []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080}},
				Networks:    []string{"back", "front"},
				Resources:   &fleetv1.Resources{MemoryBytes: 128 << 20, Cpus: 0.5},
				StopTimeout: durationpb.New(30 * time.Second),
				Labels:      map[string]string{"team": "shop"},
				DependsOn: []*fleetv1.Dependency{
					{Service: "db", Condition: fleetv1.Dependency_HEALTHY},
					{Service: "migrate", Condition: fleetv1.Dependency_COMPLETED_SUCCESSFULLY},
				},
			},
		},
		Networks: []*fleetv1.AppNetwork{{Name: "back", Internal: true}, {Name: "front"}},
		Volumes:  []*fleetv1.AppVolume{{Name: "data"}},
	}
	if diff := cmp.Diff(want, res.Spec, protocmp.Transform()); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings: got %q, want none", res.Warnings)
	}
}

// fieldCase is a file whose service "app" translates to want.
type fieldCase struct {
	name, file string
	opts       Options
	want       *fleetv1.Service
	warnings   []string
}

func TestTranslateFields(t *testing.T) {
	for _, tt := range fieldCases() {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Translate(context.Background(), []byte(tt.file), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, res.Spec.Services["app"], protocmp.Transform()); diff != "" {
				t.Errorf("service app (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.warnings, res.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func fieldCases() []fieldCase {
	return []fieldCase{
		{
			name: "default network, tmpfs, bind, devices, caps, logging",
			file: `services:
  app:
    image: app:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo hi"]
    volumes: ["/srv/data:/data:ro", {type: tmpfs, target: /cache}]
    tmpfs: ["/run:size=1m"]
    devices: ["/dev/ttyUSB0:/dev/ttyUSB0:rw"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    privileged: true
    user: "1000:1000"
    working_dir: /work
    logging: {driver: local, options: {max-size: 10m}}
    mem_limit: 64m
    cpus: 0.1
    restart: on-failure:3
    healthcheck: {test: "curl -f localhost", disable: false}
    ports: ["127.0.0.1:5353:53/udp", "9000"]
    pull_policy: missing
`,
			opts: Options{Name: "app", Revision: 1},
			want: &fleetv1.Service{
				Image: "app:1", PullPolicy: fleetv1.Pull_IF_NOT_PRESENT, Entrypoint: []string{"/bin/sh", "-c"}, Command: []string{"echo hi"},
				Mounts: []*fleetv1.Mount{
					{Type: fleetv1.Mount_BIND, Source: "/srv/data", Target: "/data", ReadOnly: true},
					{Type: fleetv1.Mount_TMPFS, Target: "/cache"},
					{Type: fleetv1.Mount_TMPFS, Target: "/run"},
				},
				Devices:       []*fleetv1.Device{{HostPath: "/dev/ttyUSB0", ContainerPath: "/dev/ttyUSB0", Permissions: "rw"}},
				CapAdd:        []string{"NET_ADMIN"},
				CapDrop:       []string{"ALL"},
				Privileged:    true,
				User:          "1000:1000",
				WorkingDir:    "/work",
				Logging:       &fleetv1.Logging{Driver: "local", Options: map[string]string{"max-size": "10m"}},
				Resources:     &fleetv1.Resources{MemoryBytes: 64 << 20, Cpus: 0.1},
				RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_ON_FAILURE, MaxRetries: 3},
				HealthCheck:   &fleetv1.HealthCheck{Test: []string{"CMD-SHELL", "curl -f localhost"}},
				Ports:         []*fleetv1.Port{{ContainerPort: 53, HostPort: 5353, HostIp: "127.0.0.1", Protocol: "udp"}, {ContainerPort: 9000}},
				Networks:      []string{"default"},
			},
			warnings: []string{
				"services.app.volumes[0].bind.create_host_path: ignored: the agent never creates a host path: a missing one fails the container's creation",
				`services.app.tmpfs[0]: options "size=1m" ignored: the gateway sets every tmpfs's size`,
			},
		},
		{
			name: "network_mode, external volume, interpolation with a default, unset variable",
			file: `name: ${NAME:-edge}
version: "3.9"
services:
  app:
    image: ${REG}/app:${TAG:-2}
    network_mode: host
    environment: [KEEP, GONE]
    volumes: ["shared:/shared"]
    expose: ["80"]
    x-notes: ignored silently
volumes:
  shared: {external: true, name: site-data}
networks:
  spare: {}
x-anchors: {}
`,
			opts: Options{Revision: 2, Env: map[string]string{"REG": "reg.example.com", "KEEP": "yes"}},
			want: &fleetv1.Service{
				Image: "reg.example.com/app:2", NetworkMode: "host", Env: map[string]string{"KEEP": "yes"},
				Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "site-data", Target: "/shared"}},
			},
			warnings: []string{
				"version: ignored: obsolete in the Compose specification",
				"services.app.expose: ignored: services on a network reach each other's ports without it",
				"services.app.environment.GONE: left out: it has no value and is not in the given environment",
				"networks.spare: not created: no service joins it",
			},
		},
	}
}

func TestTranslateRefusals(t *testing.T) {
	tests := []struct {
		name, file string
		opts       Options
		want       []string // paths refused, in order
	}{
		{
			name: "build and unsupported fields, all reported",
			file: `name: app
services:
  web:
    build: .
    container_name: web
    read_only: true
    ulimits: {nofile: 1024}
    secrets: [key]
    volumes: [{type: bind, source: /a, target: /a, bind: {propagation: shared}}]
    deploy: {placement: {constraints: ["node.role==manager"]}, resources: {reservations: {memory: 1g}}}
    networks: {front: {aliases: [www]}}
secrets:
  key: {file: ./key}
networks:
  front: {}
`,
			opts: Options{Revision: 1},
			want: []string{"secrets", "services.web.build", "services.web.container_name", "services.web.deploy.placement",
				"services.web.deploy.resources.reservations", "services.web.networks.front.aliases", "services.web.read_only",
				"services.web.secrets", "services.web.ulimits", "services.web.volumes[0].bind.propagation", "services.web.image"},
		},
		{
			name: "no name, no revision, files outside",
			file: `include: [other.yaml]
services:
  web:
    extends: {file: base.yaml, service: web}
`,
			want: []string{"include", "services.web.extends.file", "name", "revision"},
		},
		{
			name: "values the table lets through but the agent cannot take",
			file: `name: app
services:
  Web_1:
    image: web:1
  job:
    image: job:1
    restart: always
    volumes: ["./data:/data", "/anon"]
    ports: ["8000-8010:80"]
    scale: 2
    mem_limit: 1m
    pull_policy: build
  side:
    image: side:1
    network_mode: service:job
  api:
    depends_on:
      job: {condition: service_completed_successfully}
      Web_1: {condition: service_healthy}
`,
			opts: Options{Revision: 1},
			want: []string{"services.Web_1", "services.api.image", "services.api.depends_on.Web_1.condition", "services.api.depends_on.job.condition",
				"services.job.pull_policy", "services.job.scale", "services.job.ports[0].published", "services.job.volumes[0].source", "services.job.volumes[1].source",
				"services.job.mem_limit", "services.side.network_mode"},
		},
		{
			name: "a field inherited through extends",
			file: "name: app\nservices:\n  base: {image: b:1, ulimits: {nofile: 10}}\n  web: {extends: base, image: w:1}\n",
			opts: Options{Revision: 1},
			want: []string{"services.base.ulimits", "services.web.ulimits"},
		},
		{
			name: "an alias bomb is refused before compose-go expands it",
			file: aliasBomb(),
			opts: Options{Name: "app", Revision: 1},
			want: []string{"(file)"},
		},
		{
			name: "a volume's name without external",
			file: "name: app\nservices:\n  web: {image: w:1, volumes: [\"vol:/v\"]}\nvolumes:\n  vol: {name: shared-data}\n",
			opts: Options{Revision: 1},
			want: []string{"volumes.vol.name"},
		},
		{
			name: "env_file without a directory",
			file: "name: app\nservices:\n  web: {image: web:1, env_file: [web.env]}\n",
			opts: Options{Revision: 1},
			want: []string{"services.web.env_file[0]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Translate(context.Background(), []byte(tt.file), tt.opts)
			ce, ok := errors.AsType[*Error](err)
			if !ok {
				t.Fatalf("got %v, want an *Error", err)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("errors.Is(err, ErrInvalidArgument) = false")
			}
			var got []string
			for _, r := range ce.Refusals {
				got = append(got, r.Path)
				if r.Msg == "" {
					t.Errorf("%s: refused without a reason", r.Path)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("refused paths (-want +got):\n%s\n%s", diff, strings.Join(ce.Lines(), "\n"))
			}
		})
	}
}

// aliasBomb is a YAML whose aliases expand to 9^9 strings.
func aliasBomb() string {
	doc := "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
	for i := 1; i < 9; i++ {
		p := fmt.Sprintf("*a%d", i-1)
		doc += fmt.Sprintf("a%d: &a%d [%s]\n", i, i, strings.Repeat(p+", ", 8)+p)
	}
	return doc + "services:\n  web: {image: w:1}\nx-all: *a8\n"
}

func TestTranslateBuildMessage(t *testing.T) {
	_, err := Translate(context.Background(), []byte("name: app\nservices:\n  web: {build: .}\n"), Options{Revision: 1})
	ce, ok := errors.AsType[*Error](err)
	if !ok {
		t.Fatalf("got %v, want an *Error", err)
	}
	if got, want := ce.Lines(), "services.web.build: not supported, push an image"; !slices.Contains(got, want) {
		t.Errorf("got %q, want it to hold %q", got, want)
	}
}

func TestTranslateEnvFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "web.env"), []byte("A=from-file\nB=${B_SRC}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside.env")
	if err := os.WriteFile(outside, []byte("X=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link.env")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, envFile string
		want          map[string]string
		refused       bool
	}{
		{"beside the file", "web.env", map[string]string{"A": "override", "B": "interpolated"}, false},
		{"absolute path", outside, nil, true},
		{"dot-dot", "../" + filepath.Base(filepath.Dir(outside)) + "/outside.env", nil, true},
		{"symlink out", "link.env", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := "name: app\nservices:\n  web:\n    image: web:1\n    env_file: [" + tt.envFile + "]\n    environment: {A: override}\n"
			res, err := Translate(context.Background(), []byte(file), Options{Revision: 1, Dir: dir, Env: map[string]string{"B_SRC": "interpolated"}})
			if tt.refused {
				if _, ok := errors.AsType[*Error](err); !ok {
					t.Fatalf("got %v, want a refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, res.Spec.Services["web"].Env); diff != "" {
				t.Errorf("env (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTranslateNoProcessEnvironment: ${VAR} comes from Options.Env only.
func TestTranslateNoProcessEnvironment(t *testing.T) {
	t.Setenv("FLEET_COMPOSE_SECRET", "leaked")
	res, err := Translate(context.Background(), []byte("name: app\nservices:\n  web:\n    image: web:1\n    environment: [\"S=${FLEET_COMPOSE_SECRET}\", FLEET_COMPOSE_SECRET]\n"), Options{Revision: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Spec.Services["web"].Env; len(got) != 1 || got["S"] != "" {
		t.Errorf("env: got %q, want only S, empty", got)
	}
	want := []string{"${FLEET_COMPOSE_SECRET}: is not in the given environment: replaced by an empty string",
		"services.web.environment.FLEET_COMPOSE_SECRET: left out: it has no value and is not in the given environment"}
	if diff := cmp.Diff(want, res.Warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}
