package fetch

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/fleet-agent/fleet/internal/errdefs"
)

// stepClock moves one minute on each reading, from an hour after the real
// time: whatever a test wrote counts as written before GC started, and
// images added in turn have distinct "used" times.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Minute)
	return c.t
}

func newTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &stepClock{t: time.Now().Add(time.Hour).UTC()}
	s.now = c.now
	return s
}

// putBlob commits b and returns its descriptor.
func putBlob(t *testing.T, s *Store, mt types.MediaType, b []byte) v1.Descriptor {
	t.Helper()
	d := v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: digestOf(b)}
	if err := s.put(d.Digest, b); err != nil {
		t.Fatal(err)
	}
	return d
}

func blobDesc(b []byte) v1.Descriptor {
	return v1.Descriptor{MediaType: types.OCILayer, Size: int64(len(b)), Digest: digestOf(b)}
}

// manifestOf is an image manifest naming config and layers (contents).
func manifestOf(config []byte, layers ...[]byte) *v1.Manifest {
	m := &v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: blobDesc(config)}
	m.Config.MediaType = types.OCIConfigJSON
	for _, l := range layers {
		m.Layers = append(m.Layers, blobDesc(l))
	}
	return m
}

// putImage commits a config, the layers and their manifest and returns the
// manifest's descriptor.
func putImage(t *testing.T, s *Store, config []byte, layers ...[]byte) v1.Descriptor {
	t.Helper()
	putBlob(t, s, types.OCIConfigJSON, config)
	for _, l := range layers {
		putBlob(t, s, types.OCILayer, l)
	}
	raw, err := json.Marshal(manifestOf(config, layers...))
	if err != nil {
		t.Fatal(err)
	}
	return putBlob(t, s, types.OCIManifestSchema1, raw)
}

// putIndex commits an index of the children (which need not be stored).
func putIndex(t *testing.T, s *Store, children ...v1.Descriptor) v1.Descriptor {
	t.Helper()
	raw, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: children})
	if err != nil {
		t.Fatal(err)
	}
	return putBlob(t, s, types.OCIImageIndex, raw)
}

func addImage(t *testing.T, s *Store, ref string, d v1.Descriptor) {
	t.Helper()
	if err := s.addImage(ref, d); err != nil {
		t.Fatalf("addImage(%s): %v", ref, err)
	}
}

func usedAt(t *testing.T, s *Store, ref string) time.Time {
	t.Helper()
	d, ok, err := s.Lookup(ref)
	if err != nil || !ok {
		t.Fatalf("Lookup(%s) = %v, %v", ref, ok, err)
	}
	at, err := time.Parse(time.RFC3339Nano, d.Annotations[UsedAnnotation])
	if err != nil {
		t.Fatalf("%s: %s annotation: %v", ref, UsedAnnotation, err)
	}
	return at
}

// Lookup finds an image by the reference it was added under; addImage and
// Touch record when it was last used.
func TestLookupAndTouch(t *testing.T) {
	s := newTestStore(t)
	a := putImage(t, s, []byte("config a"), []byte("layer a"))
	b := putImage(t, s, []byte("config b"), []byte("layer b"))
	addImage(t, s, "reg/app:a", a)
	addImage(t, s, "reg/app:b", b)
	addImage(t, s, "reg/app:b2", b)
	tests := []struct {
		ref    string
		want   v1.Hash
		wantOK bool
	}{
		{ref: "reg/app:a", want: a.Digest, wantOK: true},
		{ref: "reg/app:b", want: b.Digest, wantOK: true},
		{ref: "reg/app:b2", want: b.Digest, wantOK: true},
		{ref: "reg/app:c"},
		{ref: ""},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			d, ok, err := s.Lookup(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.wantOK || d.Digest != tt.want {
				t.Errorf("Lookup(%q) = %s, %v; want %s, %v", tt.ref, d.Digest, ok, tt.want, tt.wantOK)
			}
			if ok && d.Annotations[RefNameAnnotation] != tt.ref {
				t.Errorf("Lookup(%q) named %q", tt.ref, d.Annotations[RefNameAnnotation])
			}
		})
	}

	before := usedAt(t, s, "reg/app:a")
	if !before.Before(usedAt(t, s, "reg/app:b")) {
		t.Errorf("a added before b, but used %s, not before b's %s", before, usedAt(t, s, "reg/app:b"))
	}
	if err := s.Touch("reg/app:a"); err != nil {
		t.Fatal(err)
	}
	if after := usedAt(t, s, "reg/app:a"); !after.After(usedAt(t, s, "reg/app:b2")) {
		t.Errorf("after Touch, a used %s, want after the last added (%s)", after, usedAt(t, s, "reg/app:b2"))
	}
	if err := s.Touch("reg/app:c"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Touch of an absent ref = %v, want %v", err, errdefs.ErrNotFound)
	}
}

// addImage refuses a manifest whose blobs are not all in the store, so
// index.json never names an image GC (or a crash) left incomplete; an
// index's children are optional (one platform of several is fetched).
func TestAddImageNeedsItsBlobs(t *testing.T) {
	s := newTestStore(t)
	full := putImage(t, s, []byte("config"), []byte("layer 1"))
	raw, _ := json.Marshal(manifestOf([]byte("config"), []byte("layer 1"), []byte("layer 2 (absent)")))
	partly := putBlob(t, s, types.OCIManifestSchema1, raw)
	tests := []struct {
		name    string
		desc    v1.Descriptor
		wantErr error
	}{
		{name: "complete", desc: full},
		{name: "a layer missing", desc: partly, wantErr: errdefs.ErrNotFound},
		{name: "manifest missing", desc: blobDesc([]byte("no such manifest")), wantErr: errdefs.ErrNotFound},
		{name: "index with one child stored", desc: putIndex(t, s, full, blobDesc([]byte("other platform")))},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := fmt.Sprintf("reg/app:%d", i)
			err := s.addImage(ref, tt.desc)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("addImage = %v, want %v", err, tt.wantErr)
			}
			if _, ok, _ := s.Lookup(ref); ok != (tt.wantErr == nil) {
				t.Errorf("listed = %v, want %v", ok, tt.wantErr == nil)
			}
		})
	}
}

// writePartial leaves n bytes of b in its partial file, as a cut download.
func writePartial(t *testing.T, s *Store, b []byte, n int) {
	t.Helper()
	p, err := s.openPartial(digestOf(b))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(b[:n]); err != nil {
		t.Fatal(err)
	}
	if err := p.close(); err != nil {
		t.Fatal(err)
	}
}

// Missing counts what a fetch still has to download: blobs not committed,
// less what their partial files hold, each digest once.
func TestMissing(t *testing.T) {
	config, l1, l2, l3 := []byte("config"), []byte("layer one"), []byte("layer two, cut"), []byte("layer three")
	tests := []struct {
		name     string
		commit   [][]byte
		partials map[string]int // content → bytes in its partial file
		m        *v1.Manifest
		want     int64
	}{
		{name: "empty store", m: manifestOf(config, l1, l2), want: int64(len(config) + len(l1) + len(l2))},
		{name: "all committed", commit: [][]byte{config, l1, l2}, m: manifestOf(config, l1, l2)},
		{
			name: "partial bytes count", commit: [][]byte{config, l1}, partials: map[string]int{string(l2): 5},
			m: manifestOf(config, l1, l2, l3), want: int64(len(l2) - 5 + len(l3)),
		},
		{name: "a layer twice", commit: [][]byte{config}, m: manifestOf(config, l3, l3), want: int64(len(l3))},
		{
			name: "an empty partial", commit: [][]byte{config}, partials: map[string]int{string(l1): 0},
			m: manifestOf(config, l1), want: int64(len(l1)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t)
			for _, b := range tt.commit {
				putBlob(t, s, types.OCILayer, b)
			}
			for b, n := range tt.partials {
				writePartial(t, s, []byte(b), n)
			}
			if got := s.Missing(tt.m); got != tt.want {
				t.Errorf("Missing = %d, want %d", got, tt.want)
			}
		})
	}
}

// A partial file longer than its blob is started again from zero by the
// fetch, so none of it counts.
func TestMissingOverlongPartial(t *testing.T) {
	s := newTestStore(t)
	l := []byte("layer")
	p, err := s.openPartial(digestOf(l))
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("layer and more"))
	p.close()
	if got, want := s.Missing(manifestOf(nil, l)), int64(len(l)); got != want {
		t.Errorf("Missing = %d, want %d", got, want)
	}
}

// Usage is the bytes of the committed blobs and of the partial files.
func TestUsage(t *testing.T) {
	tests := []struct {
		name     string
		commit   [][]byte
		partials map[string]int
		want     int64
	}{
		{name: "empty"},
		{name: "blobs", commit: [][]byte{[]byte("12345"), []byte("123")}, want: 8},
		{name: "blobs and partials", commit: [][]byte{[]byte("12345")}, partials: map[string]int{"1234567": 4, "abc": 3}, want: 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t)
			for _, b := range tt.commit {
				putBlob(t, s, types.OCILayer, b)
			}
			for b, n := range tt.partials {
				writePartial(t, s, []byte(b), n)
			}
			got, err := s.Usage()
			if err != nil || got != tt.want {
				t.Errorf("Usage = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}
