package layoutreg_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/fleet-agent/fleet/agent/engine/layoutreg"
)

// newLayout writes a random image into a layout, tagged "1" in its index.
func newLayout(t testing.TB) (string, v1.Image) {
	t.Helper()
	dir := t.TempDir()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "1"})); err != nil {
		t.Fatal(err)
	}
	return dir, img
}

// The go-containerregistry client pulls the image, by digest and by tag,
// and it validates (every blob's digest checked).
func TestPull(t *testing.T) {
	dir, img := newLayout(t)
	reg := layoutreg.New(dir, "agent/abc")
	srv := httptest.NewServer(reg)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	want, _ := img.Digest()
	for _, ref := range []string{host + "/agent/abc@" + want.String(), host + "/agent/abc:1"} {
		t.Run(ref, func(t *testing.T) {
			r, err := name.ParseReference(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			got, err := remote.Image(r)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := got.Digest(); d != want {
				t.Errorf("digest = %s, want %s", d, want)
			}
			if err := validate.Image(got); err != nil {
				t.Errorf("validate: %v", err)
			}
		})
	}
	if reg.Sent() == 0 {
		t.Error("Sent() = 0 after pulls, want the bytes served")
	}
}

func TestErrors(t *testing.T) {
	dir, img := newLayout(t)
	layers, _ := img.Layers()
	gone, _ := layers[0].Digest()
	if err := os.Remove(filepath.Join(dir, "blobs", gone.Algorithm, gone.Hex)); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(layoutreg.New(dir, "agent/abc"))
	defer srv.Close()
	m, _ := img.Digest()
	cfg, _ := img.ConfigName()
	tests := []struct {
		name, method, path, rng string
		status                  int
		body                    string
	}{
		{"base", "GET", "/v2/", "", 200, "{}"},
		{"other repository", "GET", "/v2/agent/other/manifests/" + m.String(), "", 404, "NAME_UNKNOWN"},
		{"repository prefix only", "GET", "/v2/agent/abcd/manifests/" + m.String(), "", 404, "NAME_UNKNOWN"},
		{"unknown tag", "GET", "/v2/agent/abc/manifests/2", "", 404, "MANIFEST_UNKNOWN"},
		{"missing blob", "GET", "/v2/agent/abc/blobs/" + gone.String(), "", 404, "BLOB_UNKNOWN"},
		{"bad digest", "GET", "/v2/agent/abc/blobs/sha256:../../index.json", "", 400, "DIGEST_INVALID"},
		{"write", "PUT", "/v2/agent/abc/manifests/1", "", 405, "UNSUPPORTED"},
		{"upload", "POST", "/v2/agent/abc/blobs/uploads/", "", 405, "UNSUPPORTED"},
		{"range", "GET", "/v2/agent/abc/blobs/" + cfg.String(), "bytes=0-0", 206, "{"},
		{"head", "HEAD", "/v2/agent/abc/manifests/" + m.String(), "", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.body) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, resp.StatusCode, b, tt.status, tt.body)
			}
		})
	}
}
