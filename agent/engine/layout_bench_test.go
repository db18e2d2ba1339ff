package engine_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
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
	"github.com/fleet-agent/fleet/internal/testenv"
)

// benchImage is an image in a benchmark layout.
type benchImage struct {
	manifest, config v1.Hash
	ref              string
}

// benchLayout is a layout with a random 64 MB, 4-layer image (base), one
// with its first 3 layers (shared) and one with those and a new fourth
// (next), served on loopback.
type benchLayout struct {
	dir                string
	host, repo         string
	reg                *layoutreg.Registry
	base, shared, next benchImage
	close              func()
}

func newBenchLayout(b *testing.B, raw *client.Client, run string) *benchLayout {
	b.Helper()
	dir, err := os.MkdirTemp(b.TempDir(), "layout")
	if err != nil {
		b.Fatal(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	base, err := random.Image(16<<20, 4)
	if err != nil {
		b.Fatal(err)
	}
	ls, _ := base.Layers()
	last, err := random.Layer(16<<20, "application/vnd.docker.image.rootfs.diff.tar.gzip")
	if err != nil {
		b.Fatal(err)
	}
	shared, err := mutate.AppendLayers(empty.Image, ls[0], ls[1], ls[2])
	if err != nil {
		b.Fatal(err)
	}
	next, err := mutate.AppendLayers(shared, last)
	if err != nil {
		b.Fatal(err)
	}
	var imgs []benchImage
	for i, img := range []v1.Image{base, shared, next} {
		img = labelled(b, img, run)
		if err := p.AppendImage(img); err != nil {
			b.Fatal(err)
		}
		m, _ := img.Digest()
		cfg, _ := img.ConfigName()
		imgs = append(imgs, benchImage{m, cfg, fmt.Sprintf("fleet-test/bench-%d:%s", i, run)})
		removeImageAtCleanup(b, raw, cfg)
	}
	l := &benchLayout{dir: dir, repo: "fleet/" + run, base: imgs[0], shared: imgs[1], next: imgs[2]}
	l.reg = layoutreg.New(dir, l.repo)
	srv := httptest.NewServer(l.reg)
	l.host = strings.TrimPrefix(srv.URL, "http://")
	l.close = func() { srv.Close(); os.RemoveAll(dir) }
	return l
}

func (l *benchLayout) remove(b *testing.B, raw *client.Client) {
	b.Helper()
	removeImages(b, raw, []benchImage{l.base, l.shared, l.next})
}

// BenchmarkLoadVsLoopbackPull: getting a 64 MB, 4-layer image from the
// agent's layout into the engine, by LoadFromLayout and by the engine's
// pull from the layout served on loopback (plus the tag), each iteration
// starting without the image. "clean": the engine has none of its layers;
// "3-of-4-known": the engine got an image with the first 3 layers the same
// way just before, so only the last is new; "…-by-the-other-path": the
// same, the first image got by the other path, from a fresh layout each
// iteration (the engine remembers which layer digests it pulled, even
// after the image is removed). The bytes are those read from the layout:
// sent to the engine's load endpoint, or served by the loopback registry.
func BenchmarkLoadVsLoopbackPull(b *testing.B) {
	raw := testenv.DockerClient(b)
	run := fmt.Sprint(time.Now().UnixNano())
	d, err := engine.NewDocker("", "test/bench-"+run, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })

	type path struct {
		name string
		get  func(ctx context.Context, l *benchLayout, img benchImage, read *int64) error
	}
	paths := []path{
		{"load", func(ctx context.Context, l *benchLayout, img benchImage, read *int64) error {
			return d.LoadFromLayoutCounting(ctx, l.dir, img.manifest, img.ref, func(n int) { *read += int64(n) })
		}},
		{"pull", func(ctx context.Context, l *benchLayout, img benchImage, read *int64) error {
			n0 := l.reg.Sent()
			err := d.PullFromLoopback(ctx, l.host, l.repo, img.manifest, img.ref)
			*read += l.reg.Sent() - n0
			return err
		}},
	}
	cases := []struct {
		name         string
		known, other bool // 3 layers known; got by the other path
	}{
		{"clean", false, false},
		{"3-of-4-known", true, false},
		{"3-of-4-known-by-the-other-path", true, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			l := newBenchLayout(b, raw, run+"-"+c.name)
			defer l.close()
			elapsed, read := make([]time.Duration, len(paths)), make([]int64, len(paths))
			for b.Loop() {
				b.StopTimer()
				if c.other {
					l.remove(b, raw)
					l.close()
					l = newBenchLayout(b, raw, fmt.Sprint(run, "-", c.name, "-", time.Now().UnixNano()))
				}
				for i, p := range paths {
					b.StopTimer()
					l.remove(b, raw)
					img := l.base
					if c.known {
						prime := p
						if c.other {
							prime = paths[1-i]
						}
						var ignored int64
						if err := prime.get(ctx, l, l.shared, &ignored); err != nil {
							b.Fatal(err)
						}
						img = l.next
					}
					b.StartTimer()
					t0 := time.Now()
					if err := p.get(ctx, l, img, &read[i]); err != nil {
						b.Fatalf("%s: %v", p.name, err)
					}
					elapsed[i] += time.Since(t0)
				}
			}
			b.StopTimer()
			l.remove(b, raw)
			for i, p := range paths {
				b.ReportMetric(float64(elapsed[i].Milliseconds())/float64(b.N), p.name+"-ms/op")
				b.ReportMetric(float64(read[i])/(1<<20)/float64(b.N), p.name+"-MiB-read/op")
			}
			b.ReportMetric(float64(elapsed[1])/float64(elapsed[0]), "pull/load")
		})
	}
}

// removeImages removes the images by ID, with all their tags, and checks
// they are gone.
func removeImages(b *testing.B, raw *client.Client, imgs []benchImage) {
	b.Helper()
	ctx := context.Background()
	for _, img := range imgs {
		raw.ImageRemove(ctx, img.config.String(), image.RemoveOptions{Force: true, PruneChildren: true})
		if _, err := raw.ImageInspect(ctx, img.config.String()); err == nil {
			b.Fatalf("image %s still there after removal", img.config)
		}
	}
}
