package fetch

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestGetReservesBeforeTheFirstByte: Reserve is told the bytes still to
// download (less what partial files hold), and a refusal ends the fetch
// with nothing written; Release follows a granted reservation.
func TestGetReservesBeforeTheFirstByte(t *testing.T) {
	img := testImage(t, 21, 2, 256<<10)
	host := startRegistry(t, img, nil)
	dir := t.TempDir()
	f, err := New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	// A quarter of the first layer is already there from a cut download.
	l := m.Layers[0]
	layer, _ := img.LayerByDigest(l.Digest)
	rc, err := layer.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, l.Size/4)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if err := os.WriteFile(filepath.Join(dir, "partial", "sha256-"+l.Digest.Hex), head, 0o600); err != nil {
		t.Fatal(err)
	}
	want := imageSize(t, img) - int64(len(mustRaw(t, img))) - l.Size/4
	refusal := errors.New("no room")
	var asked int64
	_, err = f.Get(t.Context(), Request{Ref: host + "/test/img:v1", Reserve: func(_ context.Context, need int64) (func(), error) {
		asked = need
		return nil, refusal
	}})
	if !errors.Is(err, refusal) {
		t.Fatalf("Get with a refused reservation: %v, want the refusal", err)
	}
	if asked != want {
		t.Errorf("Reserve asked for %d bytes, want %d (config + layers - partial bytes)", asked, want)
	}
	if blobs, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256")); len(blobs) != 0 {
		t.Errorf("blobs written after a refused reservation: %v", blobs)
	}
	released := 0
	res, err := f.Get(t.Context(), Request{Ref: host + "/test/img:v1", Reserve: func(context.Context, int64) (func(), error) {
		return func() { released++ }, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if released != 1 {
		t.Errorf("release called %d times, want 1", released)
	}
	checkStore(t, dir, res.Manifest, img)
	if res.Fetched != want {
		t.Errorf("Fetched = %d, want %d (what was missing)", res.Fetched, want)
	}
}

// TestGetResultAndResolve: a multi-platform image resolves to its index's
// digest (what the registry and docker pull report), with the platform's
// manifest and config beside it; Resolve downloads no blob.
func TestGetResultAndResolve(t *testing.T) {
	amd, arm := testImage(t, 23, 1, 64<<10), testImage(t, 22, 1, 64<<10)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	p := newFaultProxy(t, startRegistry(t, nil, nil))
	p.start()
	ref := p.addr() + "/test/multi:v1"
	if err := remote.WriteIndex(mustRef(t, ref), idx); err != nil {
		t.Fatal(err)
	}
	f, err := New(testConfig(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	armDigest, _ := arm.Digest()
	cfgDigest, _ := arm.ConfigName()
	platform := v1.Platform{OS: "linux", Architecture: "arm64"}
	before := p.down.Load()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, err := f.Resolve(ctx, Request{Ref: ref, Platform: platform})
	if err != nil {
		t.Fatal(err)
	}
	if moved := p.down.Load() - before; moved > 16<<10 {
		t.Errorf("Resolve moved %d bytes, want manifests only", moved)
	}
	want := Result{Digest: idxDigest, Manifest: armDigest, Config: cfgDigest, Size: imageSize(t, arm) - int64(len(mustRaw(t, arm)))}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("Resolve = %+v, want %+v", res, want)
	}
	got, err := f.Get(ctx, Request{Ref: ref, Platform: platform})
	if err != nil {
		t.Fatal(err)
	}
	want.Fetched = want.Size
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Get = %+v, want %+v", got, want)
	}
	// From the store alone, by the index's digest: the same result.
	got, err = f.Get(ctx, Request{Ref: p.addr() + "/test/multi@" + idxDigest.String(), Platform: platform})
	want.Fetched = 0
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Get by index digest = %+v, %v; want %+v", got, err, want)
	}
}
