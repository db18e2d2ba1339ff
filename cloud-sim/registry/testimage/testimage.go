// Package testimage builds the container images tests run: the static
// testapp binary as the only layer, with go-containerregistry, pushed to an
// in-process registry. No image comes from outside the machine.
package testimage

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/internal/testenv"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var (
	binOnce  sync.Once
	binLayer v1.Layer // the testapp binary at /app, compressed once per process
	binErr   error
)

// processRun is in every image this process builds (the environment
// variable FLEET_TESTIMAGE_RUN), so that no two test processes build the
// same image: make test runs several at once on one engine, and an image
// of the same content pulled by both had one id, which one's cleanup
// removed under the other ("No such image" at create).
var processRun = fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())

// testappLayer compiles testapp (static, for this machine's architecture)
// once per process, and is its layer.
func testappLayer(t testing.TB) v1.Layer {
	t.Helper()
	binOnce.Do(func() {
		if p, ok := testenv.Prebuilt("testapp"); ok {
			binLayer, binErr = layerOf(p)
			return
		}
		dir, err := os.MkdirTemp("", "testapp-")
		if err != nil {
			binErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "testapp")
		_, self, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./testapp")
		cmd.Dir = filepath.Dir(self)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if b, err := cmd.CombinedOutput(); err != nil {
			binErr = &buildError{err: err, out: string(b)}
			return
		}
		binLayer, binErr = layerOf(out)
	})
	if binErr != nil {
		t.Fatalf("build testapp: %v", binErr)
	}
	return binLayer
}

// layerOf is the layer of the testapp binary at path, as /app.
func layerOf(path string) (v1.Layer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return registry.Layer("app", data, 0o755)
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// Registry is one of cloud-sim's emulated registries, on a loopback port
// unless WithConfig says otherwise; the Docker Engine treats 127.0.0.0/8
// registries as insecure, so it pulls from those over plain HTTP.
type Registry struct {
	*registry.Server
}

// Option configures a Registry.
type Option func(*registry.Config)

// WithAuth guards pulls with an authentication scheme (tests push in
// process, without it).
func WithAuth(a registry.Auth) Option { return func(c *registry.Config) { c.Auth = a } }

// WithBasicAuth makes pulls require HTTP Basic credentials, as Quay, Harbor,
// Nexus, Artifactory and ACR do.
func WithBasicAuth(user, password string) Option {
	return WithAuth(registry.Basic{Users: map[string]string{user: password}})
}

// WithConfig changes anything else (address, TLS certificate).
func WithConfig(f func(*registry.Config)) Option { return Option(f) }

// NewRegistry starts a registry, closed at cleanup.
func NewRegistry(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	var cfg registry.Config
	for _, o := range opts {
		o(&cfg)
	}
	s, err := registry.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &Registry{Server: s}
}

// Spec describes an image to build.
type Spec struct {
	Repo string            // e.g. "team/web"
	Tag  string            // e.g. "1"
	Env  map[string]string // baked into the image config (MODE, MESSAGE, …)
	// Padding adds a layer of this many random-ish bytes, to make a bigger
	// or multi-layer image.
	Padding int
	// PadLayers splits the padding into this many layers (1 when zero).
	PadLayers int
}

// Push builds the image and pushes it; it returns the full reference
// (host/repo:tag) and the manifest digest.
func (r *Registry) Push(t testing.TB, s Spec) (ref, digest string) {
	t.Helper()
	digest, err := r.Server.Push(context.Background(), s.Repo, s.Tag, Build(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return r.Host + "/" + s.Repo + ":" + s.Tag, digest
}

// Build builds the image of s.
func Build(t testing.TB, s Spec) v1.Image {
	t.Helper()
	var extra []v1.Layer
	n := max(s.PadLayers, 1)
	for l := 0; l < n && s.Padding > 0; l++ {
		pad := make([]byte, s.Padding/n)
		for i := range pad {
			pad[i] = byte(i*7 + i/251 + l)
		}
		layer, err := registry.Layer(fmt.Sprint("padding", l), pad, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, layer)
	}
	env := []string{"FLEET_TESTIMAGE_RUN=" + processRun}
	for _, k := range slices.Sorted(maps.Keys(s.Env)) { // one spec, one image
		env = append(env, k+"="+s.Env[k])
	}
	img, err := registry.ImageOf(testappLayer(t), []string{"/app"}, env, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
