package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

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

// gcFixture is a store holding three images and some litter, each blob by
// name:
//   - A (config, layer, shared layer, manifest) and B (the same, with the
//     shared layer in common);
//   - I, an index of two platforms, one of them (amd) fetched;
//   - an orphan blob, a partial file of an abandoned pull, a blob and a
//     partial file whose digests are locked (a download in progress), and
//     an orphan committed after GC started.
type gcFixture struct {
	s       *Store
	blobs   map[string]v1.Hash
	partial map[string]v1.Hash
	size    map[string]int64
	unlock  []func()
}

func newGCFixture(t *testing.T) *gcFixture {
	f := &gcFixture{s: newTestStore(t), blobs: map[string]v1.Hash{}, partial: map[string]v1.Hash{}, size: map[string]int64{}}
	s := f.s
	blob := func(name string, b []byte) {
		f.blobs[name], f.size[name] = digestOf(b), int64(len(b))
	}
	image := func(ref string, layers ...string) v1.Descriptor {
		config := []byte(ref + " config")
		blob(ref+".config", config)
		var ls [][]byte
		for _, l := range layers {
			ls = append(ls, []byte(l+" bytes"))
			blob(l, []byte(l+" bytes"))
		}
		d := putImage(t, s, config, ls...)
		f.blobs[ref+".manifest"], f.size[ref+".manifest"] = d.Digest, d.Size
		return d
	}
	addImage(t, s, "A", image("A", "A.layer", "shared"))
	addImage(t, s, "B", image("B", "B.layer", "shared"))
	amd := image("I.amd", "I.amd.layer")
	amd.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := blobDesc([]byte("arm64 manifest, not fetched"))
	arm.MediaType, arm.Platform = types.OCIManifestSchema1, &v1.Platform{OS: "linux", Architecture: "arm64"}
	idx := putIndex(t, s, amd, arm)
	f.blobs["I.index"], f.size["I.index"] = idx.Digest, idx.Size
	addImage(t, s, "I", idx)

	putBlob(t, s, types.OCILayer, []byte("orphan bytes"))
	blob("orphan", []byte("orphan bytes"))
	locked := putBlob(t, s, types.OCILayer, []byte("locked orphan bytes"))
	blob("locked orphan", []byte("locked orphan bytes"))
	fresh := putBlob(t, s, types.OCILayer, []byte("fresh orphan bytes"))
	blob("fresh orphan", []byte("fresh orphan bytes"))
	future := time.Now().Add(24 * time.Hour)
	if err := os.Chtimes(s.blobPath(fresh.Digest), future, future); err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]int{"abandoned": 4, "locked partial": 6} {
		b := []byte(name + " bytes")
		writePartial(t, s, b, n)
		f.partial[name], f.size[name] = digestOf(b), int64(n)
	}
	for _, h := range []v1.Hash{locked.Digest, f.partial["locked partial"]} {
		unlock, err := s.lock(t.Context(), h)
		if err != nil {
			t.Fatal(err)
		}
		f.unlock = append(f.unlock, unlock)
	}
	return f
}

// present names the blobs and partial files in the store.
func (f *gcFixture) present() map[string]bool {
	got := map[string]bool{}
	for name, h := range f.blobs {
		if f.s.Has(h) {
			got[name] = true
		}
	}
	for name, h := range f.partial {
		if _, err := os.Stat(f.s.partialPath(h)); err == nil {
			got[name] = true
		}
	}
	return got
}

func keepRefs(refs ...string) func(string, v1.Descriptor) bool {
	return func(ref string, _ v1.Descriptor) bool { return slices.Contains(refs, ref) }
}

func TestGC(t *testing.T) {
	always := []string{"locked orphan", "locked partial", "fresh orphan"}
	imageA := []string{"A.config", "A.layer", "shared", "A.manifest"}
	imageB := []string{"B.config", "B.layer", "shared", "B.manifest"}
	imageI := []string{"I.index", "I.amd.manifest", "I.amd.config", "I.amd.layer"}
	tests := []struct {
		name string
		keep []string
		want [][]string // the blobs and partial files left
	}{
		{name: "keep all", keep: []string{"A", "B", "I"}, want: [][]string{always, imageA, imageB, imageI}},
		{name: "drop B, keep its shared layer", keep: []string{"A", "I"}, want: [][]string{always, imageA, imageI}},
		{name: "drop A", keep: []string{"B", "I"}, want: [][]string{always, imageB, imageI}},
		{name: "index keeps its fetched child", keep: []string{"I"}, want: [][]string{always, imageI}},
		{name: "drop the index and its child", keep: []string{"A", "B"}, want: [][]string{always, imageA, imageB}},
		{name: "drop all", want: [][]string{always}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newGCFixture(t)
			before := f.present()
			freed, err := f.s.GC(t.Context(), keepRefs(tt.keep...))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, names := range tt.want {
				for _, n := range names {
					want[n] = true
				}
			}
			got := f.present()
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("left after GC (-want +got):\n%s", diff)
			}
			var wantFreed int64
			for name := range before {
				if !got[name] {
					wantFreed += f.size[name]
				}
			}
			if freed != wantFreed {
				t.Errorf("freed = %d, want %d", freed, wantFreed)
			}
			for _, ref := range []string{"A", "B", "I"} {
				if _, ok, _ := f.s.Lookup(ref); ok != slices.Contains(tt.keep, ref) {
					t.Errorf("after GC, %s listed = %v, want %v", ref, ok, !ok)
				}
			}
			for _, ref := range tt.keep {
				if _, err := f.s.Path().Image(f.blobs[ref+".manifest"]); ref != "I" && err != nil {
					t.Errorf("kept image %s does not load from the layout: %v", ref, err)
				}
			}
		})
	}
}

// A digest locked by a download keeps its blob and partial file through a
// GC; once the lock is released, the next GC removes them.
func TestGCSkipsLockedDigests(t *testing.T) {
	f := newGCFixture(t)
	if _, err := f.s.GC(t.Context(), keepRefs()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"locked orphan", "locked partial"} {
		if !f.present()[name] {
			t.Errorf("%s removed while locked", name)
		}
	}
	for _, unlock := range f.unlock {
		unlock()
	}
	freed, err := f.s.GC(t.Context(), keepRefs())
	if err != nil {
		t.Fatal(err)
	}
	if want := f.size["locked orphan"] + f.size["locked partial"]; freed != want {
		t.Errorf("freed after unlocking = %d, want %d", freed, want)
	}
	if diff := cmp.Diff(map[string]bool{"fresh orphan": true}, f.present()); diff != "" {
		t.Errorf("left (-want +got):\n%s", diff)
	}
}

// GC removes nothing when a kept manifest cannot be read: it cannot tell
// which blobs that image needs.
func TestGCStopsOnAnUnreadableManifest(t *testing.T) {
	s := newTestStore(t)
	d := putImage(t, s, []byte("config"), []byte("layer"))
	addImage(t, s, "A", d)
	orphan := putBlob(t, s, types.OCILayer, []byte("orphan"))
	if err := os.WriteFile(s.blobPath(d.Digest), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(t.Context(), keepRefs("A")); err == nil {
		t.Errorf("GC with an unreadable manifest succeeded")
	}
	if !s.Has(orphan.Digest) || !s.Has(digestOf([]byte("layer"))) {
		t.Errorf("GC removed blobs though it could not read a kept manifest")
	}
}

// trimFixture adds images p1..p4 in that order (p1 the least recently
// used), each a config, a 1000-byte layer of its own and a manifest, and
// returns the bytes each takes.
func trimFixture(t *testing.T, s *Store) map[string]int64 {
	size := map[string]int64{}
	for i := 1; i <= 4; i++ {
		ref := fmt.Sprintf("p%d", i)
		config, layer := []byte(ref+" config"), bytes.Repeat([]byte{byte(i)}, 1000)
		d := putImage(t, s, config, layer)
		addImage(t, s, ref, d)
		size[ref] = int64(len(config)+len(layer)) + d.Size
	}
	return size
}

func TestTrim(t *testing.T) {
	all := []string{"p1", "p2", "p3", "p4"}
	tests := []struct {
		name    string
		touch   []string
		keep    []string
		garbage bool                              // an orphan blob and an abandoned partial file too
		over    func(size map[string]int64) int64 // Usage - max
		want    []string                          // images left
	}{
		{name: "under the cap", over: func(map[string]int64) int64 { return 0 }, want: all},
		{name: "the oldest goes", over: func(map[string]int64) int64 { return 1 }, want: []string{"p2", "p3", "p4"}},
		{name: "two oldest", over: func(s map[string]int64) int64 { return s["p1"] + 1 }, want: []string{"p3", "p4"}},
		{name: "a kept oldest stays", keep: []string{"p1"}, over: func(map[string]int64) int64 { return 1 }, want: []string{"p1", "p3", "p4"}},
		{name: "touched is younger", touch: []string{"p1"}, over: func(map[string]int64) int64 { return 1 }, want: []string{"p1", "p3", "p4"}},
		{name: "garbage first", garbage: true, over: func(map[string]int64) int64 { return 10 }, want: all},
		{name: "all but the kept", keep: []string{"p2", "p4"}, over: func(s map[string]int64) int64 { return 1 << 20 }, want: []string{"p2", "p4"}},
		{name: "cap zero", over: func(s map[string]int64) int64 { return 1 << 20 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t)
			size := trimFixture(t, s)
			for _, ref := range tt.touch {
				if err := s.Touch(ref); err != nil {
					t.Fatal(err)
				}
			}
			if tt.garbage {
				putBlob(t, s, types.OCILayer, []byte("orphan"))
				writePartial(t, s, []byte("abandoned"), 5)
			}
			before, err := s.Usage()
			if err != nil {
				t.Fatal(err)
			}
			limit := max(before-tt.over(size), 0)
			freed, err := s.Trim(t.Context(), limit, keepRefs(tt.keep...))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ref := range all {
				if _, ok, _ := s.Lookup(ref); ok {
					got = append(got, ref)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("images left (-want +got):\n%s", diff)
			}
			after, _ := s.Usage()
			if freed != before-after {
				t.Errorf("freed = %d, want %d (usage %d → %d)", freed, before-after, before, after)
			}
			if after > limit && len(got) > len(tt.keep) {
				t.Errorf("usage %d > cap %d with unkept images left", after, limit)
			}
			for _, ref := range got {
				d, _, _ := s.Lookup(ref)
				if _, err := s.Path().Image(d.Digest); err != nil {
					t.Errorf("image %s left but does not load: %v", ref, err)
				}
			}
		})
	}
}

// A held blob stays through GC though no image lists it, until released;
// holds of the same digest add up.
func TestGCKeepsHeldBlobs(t *testing.T) {
	s := newTestStore(t)
	b := putBlob(t, s, types.OCILayer, []byte("a layer a fetch found in the store"))
	r1 := s.hold(b.Digest)
	r2 := s.hold(b.Digest, digestOf([]byte("not in the store")))
	for i, release := range []func(){r1, r2} {
		if _, err := s.GC(t.Context(), keepRefs()); err != nil {
			t.Fatal(err)
		}
		if !s.Has(b.Digest) {
			t.Fatalf("held blob removed after %d of 2 releases", i)
		}
		release()
		release() // a second call releases nothing more
	}
	if _, err := s.GC(t.Context(), keepRefs()); err != nil {
		t.Fatal(err)
	}
	if s.Has(b.Digest) {
		t.Errorf("blob still there after every hold was released")
	}
}

// GC running in a loop beside a Fetch never leaves index.json naming an
// image whose blobs are not all there, and never breaks a download: the
// fetch either succeeds with the whole image in the store or is refused
// with errdefs.ErrNotFound (a blob it counted on was collected before it
// listed the image). With the image's blobs held (as Fetch should hold
// them; it does not yet), every fetch succeeds. GC's clock runs an hour
// ahead, so that only the locks and holds, not the commit time, protect
// the blobs being fetched.
func TestGCDuringFetch(t *testing.T) {
	img := testImage(t, 21, 4, 64<<10)
	host := startRegistry(t, img, nil)
	ref := host + "/test/img:v1"
	var digests []v1.Hash
	m, _ := img.Manifest()
	md, _ := img.Digest()
	for _, d := range append([]v1.Descriptor{m.Config, {Digest: md}}, m.Layers...) {
		digests = append(digests, d.Digest)
	}
	for _, tt := range []struct {
		name string
		hold bool
	}{{name: "not held"}, {name: "held", hold: true}} {
		t.Run(tt.name, func(t *testing.T) {
			const rounds = 10
			refused := 0
			for round := range rounds {
				dir := t.TempDir()
				cfg := testConfig(t, dir)
				cfg.Logger = slog.New(slog.DiscardHandler)
				cfg.Store.now = func() time.Time { return time.Now().Add(time.Hour) }
				release := func() {}
				if tt.hold {
					release = cfg.Store.hold(digests...)
				}
				digest, err := fetchBesideGC(t, cfg, ref)
				release()
				switch {
				case err == nil:
					checkStore(t, dir, digest, img)
				case errors.Is(err, errdefs.ErrNotFound) && !tt.hold:
					refused++
				default:
					t.Fatalf("round %d: Fetch beside GC: %v", round, err)
				}
				checkListedComplete(t, cfg.Store)
			}
			t.Logf("%d of %d fetches refused because GC collected a blob they counted on", refused, rounds)
		})
	}
}

// fetchBesideGC fetches ref with GC (keeping ref) running in a loop until
// the fetch ends.
func fetchBesideGC(t *testing.T, cfg Config, ref string) (v1.Hash, error) {
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	done := make(chan error)
	go func() {
		for {
			_, err := cfg.Store.GC(ctx, keepRefs(mustRef(t, ref).String()))
			if ctx.Err() != nil {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	digest, err := f.Fetch(ctx, ref, v1.Platform{})
	cancel()
	if gcErr := <-done; gcErr != nil {
		t.Fatalf("GC beside Fetch: %v", gcErr)
	}
	return digest, err
}

// checkListedComplete fails if index.json names an image whose manifest,
// config or layers are not all in the store.
func checkListedComplete(t *testing.T, s *Store) {
	t.Helper()
	im, err := s.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		img, err := s.Path().Image(d.Digest)
		if err != nil {
			t.Errorf("listed image %s does not load: %v", d.Digest, err)
			continue
		}
		if err := validate.Image(img, validate.Fast); err != nil {
			t.Errorf("listed image %s is incomplete: %v", d.Digest, err)
		}
	}
}
