// Package testimage builds the container images tests run: the static
// testapp binary as the only layer, with go-containerregistry, pushed to an
// in-process registry. No image comes from outside the machine.
package testimage

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var (
	binOnce sync.Once
	binData []byte
	binErr  error
)

// testappBinary compiles testapp (static, for this machine's architecture)
// once per process.
func testappBinary(t testing.TB) []byte {
	t.Helper()
	binOnce.Do(func() {
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
		binData, binErr = os.ReadFile(out)
	})
	if binErr != nil {
		t.Fatalf("build testapp: %v", binErr)
	}
	return binData
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// Registry is an in-process registry (go-containerregistry's) on a
// loopback port; the Docker Engine treats 127.0.0.0/8 registries as
// insecure, so it pulls from it over plain HTTP.
type Registry struct {
	srv  *httptest.Server // what pulls use
	push *httptest.Server // what Push uses: the same storage, never authenticated
}

// Option configures a Registry.
type Option func(h http.Handler) http.Handler

// WithBasicAuth makes pulls require HTTP Basic credentials, as Quay, Harbor,
// Nexus, Artifactory and ACR do (tests push without them).
func WithBasicAuth(user, password string) Option {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != password {
				w.Header().Set("WWW-Authenticate", `Basic realm="testimage"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// NewRegistry starts a registry, closed at cleanup.
func NewRegistry(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r := &Registry{push: httptest.NewServer(h)}
	t.Cleanup(r.push.Close)
	r.srv = r.push
	if len(opts) > 0 {
		for _, o := range opts {
			h = o(h)
		}
		r.srv = httptest.NewServer(h)
		t.Cleanup(r.srv.Close)
	}
	return r
}

// Host is the registry's host:port, as used in image references.
func (r *Registry) Host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// Spec describes an image to build.
type Spec struct {
	Repo string            // e.g. "team/web"
	Tag  string            // e.g. "1"
	Env  map[string]string // baked into the image config (MODE, MESSAGE, …)
	// Padding adds a layer of this many random-ish bytes, to make a bigger
	// or multi-layer image.
	Padding int
}

// Push builds the image and pushes it; it returns the full reference
// (host/repo:tag) and the manifest digest.
func (r *Registry) Push(t testing.TB, s Spec) (ref, digest string) {
	t.Helper()
	img := Build(t, s)
	ref = r.Host() + "/" + s.Repo + ":" + s.Tag
	tag, err := name.ParseReference(strings.TrimPrefix(r.push.URL, "http://")+"/"+s.Repo+":"+s.Tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref, d.String()
}

// Build builds the image of s.
func Build(t testing.TB, s Spec) v1.Image {
	t.Helper()
	layers := []v1.Layer{tarLayer(t, "app", testappBinary(t), 0o755)}
	if s.Padding > 0 {
		pad := make([]byte, s.Padding)
		for i := range pad {
			pad[i] = byte(i*7 + i/251)
		}
		layers = append(layers, tarLayer(t, "padding", pad, 0o644))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/app"}
	for k, v := range s.Env {
		cf.Config.Env = append(cf.Config.Env, k+"="+v)
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

func tarLayer(t testing.TB, name string, data []byte, mode int64) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}
