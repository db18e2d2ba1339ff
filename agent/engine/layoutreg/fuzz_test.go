package layoutreg_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/agent/engine/layoutreg"
)

// FuzzServeHTTP: whatever the path, the registry answers without panicking
// and serves nothing but "{}" on /v2/ and the layout's blobs: not
// index.json, not a file beside the layout.
func FuzzServeHTTP(f *testing.F) {
	dir, img := newLayout(f)
	if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "secret"), []byte("secret"), 0o600); err != nil {
		f.Fatal(err)
	}
	blobs := map[string]bool{}
	filepath.Walk(filepath.Join(dir, "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			blobs[string(b)] = true
		}
		return nil
	})
	m, _ := img.Digest()
	reg := layoutreg.New(dir, "agent/abc")
	for _, s := range []string{"/v2/", "/v2/agent/abc/manifests/1", "/v2/agent/abc/manifests/" + m.String(),
		"/v2/agent/abc/blobs/sha256:../../index.json", "/v2/agent/abc/blobs/../../../secret", "/v2/agent/abc/manifests/../../index.json"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		req := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: path}, Header: http.Header{}}
		w := httptest.NewRecorder()
		reg.ServeHTTP(w, req)
		if w.Code/100 != 2 {
			return
		}
		if body := w.Body.String(); body != "{}" && !blobs[body] {
			t.Errorf("GET %q = %d with %d bytes that are no blob of the layout", path, w.Code, len(body))
		}
	})
}
