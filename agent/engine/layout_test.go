package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/engine/layoutreg"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// labelTestRun marks the images these tests make, so leftovers of a killed
// run can be found (docker images --filter label=io.fleet-agent.test-run).
const labelTestRun = "io.fleet-agent.test-run"

// testImage is a random image of n layers of size bytes each, labelled
// with run, written into a new layout; it returns the layout directory,
// the manifest digest and the config digest.
func testImage(tb testing.TB, run string, size int64, n int) (string, v1.Hash, v1.Hash) {
	tb.Helper()
	img, err := random.Image(size, int64(n))
	if err != nil {
		tb.Fatal(err)
	}
	return writeLayout(tb, labelled(tb, img, run))
}

func labelled(tb testing.TB, img v1.Image, run string) v1.Image {
	tb.Helper()
	img, err := mutate.Config(img, v1.Config{Labels: map[string]string{labelTestRun: run}})
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

func writeLayout(tb testing.TB, img v1.Image) (string, v1.Hash, v1.Hash) {
	tb.Helper()
	dir := tb.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		tb.Fatal(err)
	}
	m, _ := img.Digest()
	cfg, _ := img.ConfigName()
	return dir, m, cfg
}

// removeImageAtCleanup removes the image with this ID and all its tags.
func removeImageAtCleanup(tb testing.TB, raw *client.Client, id v1.Hash) {
	tb.Cleanup(func() {
		raw.ImageRemove(context.Background(), id.String(), image.RemoveOptions{Force: true, PruneChildren: true})
	})
}

func testRun(t *testing.T) (run, ref string) {
	run = fmt.Sprint(time.Now().UnixNano())
	return run, "fleet-test/" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + ":" + run
}

// A loaded image has the config digest as its ID and no RepoDigests; a
// container is created from it by that ID. Loading it again is fine.
func TestLoadFromLayout(t *testing.T) {
	d, raw, _ := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run, ref := testRun(t)
	dir, manifest, cfg := testImage(t, run, 1<<10, 2)
	removeImageAtCleanup(t, raw, cfg)

	for i := range 2 {
		if err := d.LoadFromLayout(ctx, dir, manifest, ref); err != nil {
			t.Fatalf("load %d: %v", i+1, err)
		}
		id, repoDigests, found, err := d.Image(ctx, ref)
		if err != nil || !found || id != cfg.String() {
			t.Fatalf("after load %d: Image(%s) = %s, found %v, %v; want ID %s (the config digest)", i+1, ref, id, found, err, cfg)
		}
		if len(repoDigests) != 0 {
			t.Errorf("RepoDigests after load = %v, want none (the engine knows no registry for a loaded image)", repoDigests)
		}
	}
	spec := &fleetv1.DeploymentSpec{Name: "loaded", Revision: 1, Image: cfg.String(), Command: []string{"/nothing"}, NetworkMode: "none"}
	id, err := d.Create(ctx, engine.ContainerName("loaded", 1), spec, engine.Host{})
	if err != nil {
		t.Fatalf("Create by image ID %s: %v", cfg, err)
	}
	if s, err := d.Inspect(ctx, id); err != nil || s.ImageID != cfg.String() {
		t.Errorf("container's image = %q, %v; want %s", s.ImageID, err, cfg)
	}
}

// A layout missing a layer or the config fails before the engine gets
// anything, naming the digest; a manifest not there fails naming it.
func TestLoadFromLayoutMissingBlob(t *testing.T) {
	d, raw, _ := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tests := []struct {
		name   string
		remove func(img v1.Image) v1.Hash
	}{
		{"layer", func(img v1.Image) v1.Hash { ls, _ := img.Layers(); h, _ := ls[1].Digest(); return h }},
		{"config", func(img v1.Image) v1.Hash { h, _ := img.ConfigName(); return h }},
		{"manifest", func(img v1.Image) v1.Hash { h, _ := img.Digest(); return h }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run, ref := testRun(t)
			img, err := random.Image(1<<10, 2)
			if err != nil {
				t.Fatal(err)
			}
			img = labelled(t, img, run)
			dir, manifest, cfg := writeLayout(t, img)
			removeImageAtCleanup(t, raw, cfg)
			gone := tt.remove(img)
			if err := os.Remove(filepath.Join(dir, "blobs", gone.Algorithm, gone.Hex)); err != nil {
				t.Fatal(err)
			}
			err = d.LoadFromLayout(ctx, dir, manifest, ref)
			if err == nil || !strings.Contains(err.Error(), gone.String()) {
				t.Errorf("LoadFromLayout without %s = %v, want an error naming %s", tt.name, err, gone)
			}
			if _, _, found, _ := d.Image(ctx, ref); found {
				t.Errorf("image %s is in the engine after a failed load", ref)
			}
		})
	}
}

// A layer whose bytes changed in the layout (same size, so the pre-check
// passes) is refused by the engine, which checks each layer against the
// config's diff IDs; the error in its answer's stream fails the load and
// no image is left.
func TestLoadFromLayoutCorruptLayer(t *testing.T) {
	d, raw, _ := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run, ref := testRun(t)
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	img = labelled(t, img, run)
	dir, manifest, cfg := writeLayout(t, img)
	removeImageAtCleanup(t, raw, cfg)
	ls, _ := img.Layers()
	h, _ := ls[1].Digest()
	path := filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	err = d.LoadFromLayout(ctx, dir, manifest, ref)
	if err == nil {
		t.Fatal("LoadFromLayout with a corrupted layer succeeded, want the engine's refusal")
	}
	t.Logf("error: %v", err)
	if _, _, found, _ := d.Image(ctx, cfg.String()); found {
		t.Errorf("image %s is in the engine after a corrupted load", cfg)
	}
}

// The engine pulls from the layout served on loopback; the image has the
// config digest as its ID, the original name as its only reference (so
// removing that removes the image), and no RepoDigests.
func TestPullFromLoopback(t *testing.T) {
	d, raw, _ := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run, ref := testRun(t)
	dir, manifest, cfg := testImage(t, run, 1<<10, 2)
	removeImageAtCleanup(t, raw, cfg)
	srv := httptest.NewServer(layoutreg.New(dir, "fleet/"+run))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	if err := d.PullFromLoopback(ctx, host, "fleet/"+run, manifest, ref); err != nil {
		t.Fatal(err)
	}
	id, repoDigests, found, err := d.Image(ctx, ref)
	if err != nil || !found || id != cfg.String() {
		t.Fatalf("Image(%s) = %s, found %v, %v; want ID %s (the config digest)", ref, id, found, err, cfg)
	}
	if len(repoDigests) != 0 {
		t.Errorf("RepoDigests = %v, want none (the loopback reference removed)", repoDigests)
	}
	if err := d.RemoveImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, _, found, err := d.Image(ctx, cfg.String()); found || err != nil {
		t.Errorf("image %s still there after its tag was removed (found %v, %v), want gone", cfg, found, err)
	}
}

// A layer whose bytes changed in the layout fails the engine's digest
// check as it pulls it from loopback, and no image is left.
func TestPullFromLoopbackCorruptLayer(t *testing.T) {
	d, raw, _ := newDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run, ref := testRun(t)
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	img = labelled(t, img, run)
	dir, manifest, cfg := writeLayout(t, img)
	removeImageAtCleanup(t, raw, cfg)
	ls, _ := img.Layers()
	h, _ := ls[1].Digest()
	path := filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(layoutreg.New(dir, "fleet/"+run))
	defer srv.Close()
	err = d.PullFromLoopback(ctx, strings.TrimPrefix(srv.URL, "http://"), "fleet/"+run, manifest, ref)
	if err == nil {
		t.Fatal("PullFromLoopback with a corrupted layer succeeded, want the engine's refusal")
	}
	t.Logf("error: %v", err)
	if _, _, found, _ := d.Image(ctx, cfg.String()); found {
		t.Errorf("image %s is in the engine after a corrupted pull", cfg)
	}
}

// A load cancelled while the image streams fails with the context's error,
// not the pipe's, and leaves no image.
func TestLoadFromLayoutCancelled(t *testing.T) {
	d, raw, _ := newDocker(t)
	run, ref := testRun(t)
	dir, manifest, cfg := testImage(t, run, 4<<20, 2)
	removeImageAtCleanup(t, raw, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sent int
	err := d.LoadFromLayoutCounting(ctx, dir, manifest, ref, func(n int) {
		if sent += n; sent > 1<<20 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("LoadFromLayout cancelled after 1 MiB = %v, want context.Canceled", err)
	}
	if _, _, found, _ := d.Image(context.Background(), cfg.String()); found {
		t.Errorf("image %s is in the engine after a cancelled load", cfg)
	}
}
