// Package layoutreg serves the blobs of an OCI image layout as a read-only
// registry (the pull side of the distribution API), for the engine to pull
// the images the agent fetched from a registry it serves on loopback.
package layoutreg

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is an http.Handler serving one repository name from a layout
// directory: /v2/, /v2/<repo>/manifests/<digest|tag> and
// /v2/<repo>/blobs/<digest>, GET and HEAD only. Other names are unknown, so
// a random repo serves as a capability against other local users.
type Registry struct {
	dir  string
	repo string
	sent atomic.Int64 // body bytes written
	// Wait, if set, is asked about a blob that is not in the layout yet
	// (its download is running): it returns once the blob is there, or an
	// error to answer 404 with.
	Wait func(ctx context.Context, h v1.Hash) error
}

// New serves the layout in dir as repository repo.
func New(dir, repo string) *Registry {
	return &Registry{dir: dir, repo: repo}
}

// Sent is the number of body bytes served so far (manifests and blobs).
func (r *Registry) Sent() int64 { return r.sent.Load() }

func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		writeErr(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "this registry is read-only")
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	p := req.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
		return
	}
	prefix := "/v2/" + r.repo + "/"
	if !strings.HasPrefix(p, prefix) {
		writeErr(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
		return
	}
	kind, ref, ok := strings.Cut(strings.TrimPrefix(p, prefix), "/")
	switch {
	case ok && kind == "manifests":
		r.manifest(w, req, ref)
	case ok && kind == "blobs":
		h, err := v1.NewHash(ref)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
			return
		}
		r.serveBlob(w, req, h, "application/octet-stream", "BLOB_UNKNOWN")
	default:
		writeErr(w, http.StatusNotFound, "UNSUPPORTED", "unknown path")
	}
}

// manifest serves a manifest by digest, or by a tag the layout's index
// names (the org.opencontainers.image.ref.name annotation).
func (r *Registry) manifest(w http.ResponseWriter, req *http.Request, ref string) {
	var desc *v1.Descriptor
	if h, err := v1.NewHash(ref); err == nil {
		desc = r.find(func(d v1.Descriptor) bool { return d.Digest == h })
		if desc == nil {
			desc = &v1.Descriptor{Digest: h}
		}
	} else {
		desc = r.find(func(d v1.Descriptor) bool { return d.Annotations[refName] == ref })
		if desc == nil {
			writeErr(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "no manifest tagged "+ref)
			return
		}
	}
	mt := desc.MediaType
	if mt == "" {
		mt = r.mediaType(desc.Digest)
	}
	r.serveBlob(w, req, desc.Digest, string(mt), "MANIFEST_UNKNOWN")
}

// find returns the descriptor of the layout's index.json that matches.
func (r *Registry) find(match func(v1.Descriptor) bool) *v1.Descriptor {
	b, err := os.ReadFile(filepath.Join(r.dir, "index.json"))
	if err != nil {
		return nil
	}
	var idx v1.IndexManifest
	if json.Unmarshal(b, &idx) != nil {
		return nil
	}
	for _, d := range idx.Manifests {
		if match(d) {
			return &d
		}
	}
	return nil
}

// mediaType reads a manifest's own mediaType field, or guesses by shape.
func (r *Registry) mediaType(h v1.Hash) types.MediaType {
	b, err := os.ReadFile(r.blobPath(h))
	if err != nil {
		return types.OCIManifestSchema1
	}
	var m struct {
		MediaType types.MediaType   `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	switch {
	case json.Unmarshal(b, &m) != nil:
		return types.OCIManifestSchema1
	case m.MediaType != "":
		return m.MediaType
	case m.Manifests != nil:
		return types.OCIImageIndex
	}
	return types.OCIManifestSchema1
}

func (r *Registry) blobPath(h v1.Hash) string {
	return filepath.Join(r.dir, "blobs", h.Algorithm, h.Hex)
}

// serveBlob serves a blob file, with Range and HEAD as http.ServeContent
// does them.
func (r *Registry) serveBlob(w http.ResponseWriter, req *http.Request, h v1.Hash, mediaType, unknown string) {
	f, err := os.Open(r.blobPath(h))
	if errors.Is(err, fs.ErrNotExist) && r.Wait != nil {
		if werr := r.Wait(req.Context(), h); werr == nil {
			f, err = os.Open(r.blobPath(h))
		}
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			writeErr(w, http.StatusNotFound, unknown, h.String()+" is not in the layout")
			return
		}
		writeErr(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", h.String())
	http.ServeContent(countingWriter{w, &r.sent}, req, "", time.Time{}, f)
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// refName is the index annotation that names a manifest's tag.
const refName = "org.opencontainers.image.ref.name"
