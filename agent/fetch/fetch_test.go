package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/fleet-agent/fleet/internal/backoff"
)

const mb = 1 << 20

// testImage is an image of random layers (uncompressed OCI layers, so
// validate can check them).
func testImage(t *testing.T, seed uint64, layers int, size int) v1.Image {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	var ls []v1.Layer
	for range layers {
		b := make([]byte, size)
		rng.Read(b)
		ls = append(ls, static.NewLayer(b, types.OCIUncompressedLayer))
	}
	img, err := mutate.AppendLayers(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1), ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// imageSize is what a fetch of img has to move: manifest, config, layers.
func imageSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// startRegistry serves an in-process registry (wrapped, if wrap is set)
// holding img as test/img:v1, and returns its host.
func startRegistry(t *testing.T, img v1.Image, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	if img != nil {
		if err := remote.Write(mustRef(t, host+"/test/img:v1"), img); err != nil {
			t.Fatal(err)
		}
	}
	return host
}

// testTransport keeps the client's socket receive buffer small, so the bytes
// the proxy counts are the bytes the fetcher has read, give or take 16 KiB.
func testTransport(t *testing.T) http.RoundTripper {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
		})
		return errors.Join(err, serr)
	}}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func testConfig(t *testing.T, dir string) Config {
	t.Helper()
	st, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Store:     st,
		Transport: testTransport(t),
		Backoff:   backoff.Policy{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond},
		Logger:    slog.New(slog.NewTextHandler(tWriter{t}, nil)),
	}
}

// checkStore asserts that the layout holds img under digest, that every
// committed blob hashes to its name, and that no partial file is left.
func checkStore(t *testing.T, dir string, digest v1.Hash, img v1.Image) {
	t.Helper()
	want, _ := img.Digest()
	if digest != want {
		t.Errorf("Fetch returned %s, want %s", digest, want)
	}
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := layoutImage(lp, digest)
	if err != nil {
		t.Fatalf("image %s not in the layout: %v", digest, err)
	}
	if err := validate.Image(got, validate.Fast); err != nil {
		t.Errorf("stored image does not validate: %v", err)
	}
	checkBlobsVerified(t, dir)
	if left, _ := os.ReadDir(filepath.Join(dir, "partial")); len(left) != 0 {
		t.Errorf("partial files left after a complete fetch: %v", left)
	}
}

// layoutImage finds the image with manifest digest h in the layout: listed
// in index.json, or a child of an index listed there (a multi-platform
// image is listed by its index).
func layoutImage(lp layout.Path, h v1.Hash) (v1.Image, error) {
	ii, err := lp.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Digest == h {
			return ii.Image(h)
		}
		if d.MediaType.IsIndex() {
			if child, err := ii.ImageIndex(d.Digest); err == nil {
				if img, err := child.Image(h); err == nil {
					return img, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("manifest %s is not listed in index.json, nor in an index it lists", h)
}

func checkBlobsVerified(t *testing.T, dir string) {
	t.Helper()
	blobs, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range blobs {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.Name() {
			t.Errorf("blob %s in the store hashes to %x", e.Name(), sum)
		}
	}
}

// ignoreRange drops the Range header: the registry answers 200, whole blob.
type ignoreRange struct {
	h      http.Handler
	ranged atomic.Int64
}

func (i *ignoreRange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Range") != "" {
		i.ranged.Add(1)
		r.Header.Del("Range")
	}
	i.h.ServeHTTP(w, r)
}

// corruptOnce flips one byte of the first answer for a blob; gets counts the
// GETs of that blob.
type corruptOnce struct {
	h      http.Handler
	digest string
	always bool // every answer, not only the first
	done   atomic.Bool
	gets   atomic.Int64
}

func (c *corruptOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+c.digest) {
		c.gets.Add(1)
		if c.done.CompareAndSwap(false, true) || c.always {
			w = &flipWriter{ResponseWriter: w, at: 1000}
		}
	}
	c.h.ServeHTTP(w, r)
}

type flipWriter struct {
	http.ResponseWriter
	at, pos int
}

func (f *flipWriter) Write(b []byte) (int, error) {
	if f.at >= f.pos && f.at < f.pos+len(b) {
		b = append([]byte(nil), b...)
		b[f.at-f.pos] ^= 0xff
	}
	f.pos += len(b)
	return f.ResponseWriter.Write(b)
}

func TestFetchThroughFaults(t *testing.T) {
	img := testImage(t, 1, 4, 2*mb)
	size := imageSize(t, img)
	layers, _ := img.Layers()
	second, _ := layers[1].Digest()
	tests := []struct {
		name         string
		cutEvery     int64
		stallAt      int64
		stallRequest string
		stall        time.Duration
		wrap         func(http.Handler) http.Handler
		maxRatio     float64 // of the bytes through the proxy to the image size; 0: not checked
		check        func(t *testing.T)
		ignoreRng    *ignoreRange
		corrupt      *corruptOnce
	}{
		{name: "clean link", maxRatio: 1.05},
		{name: "cut every 1 MB", cutEvery: 1 * mb, maxRatio: 1.05},
		{name: "stall at 3 MB", stallAt: 3 * mb, stall: 200 * time.Millisecond, maxRatio: 1.05},
		{name: "stall on the connection of the manifests", stallRequest: "/manifests/", stall: 200 * time.Millisecond, maxRatio: 1.05},
		{name: "registry ignores Range, cut every 3 MB", cutEvery: 3 * mb, ignoreRng: &ignoreRange{}},
		{name: "one corrupted byte", corrupt: &corruptOnce{digest: second.String()}, maxRatio: 1.35},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := startRegistry(t, img, func(h http.Handler) http.Handler {
				switch {
				case tt.ignoreRng != nil:
					tt.ignoreRng.h = h
					return tt.ignoreRng
				case tt.corrupt != nil:
					tt.corrupt.h = h
					return tt.corrupt
				}
				return h
			})
			p := newFaultProxy(t, host)
			p.cutEvery, p.stallAt, p.stallRequest = tt.cutEvery, tt.stallAt, tt.stallRequest
			p.start()
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			cfg.StallTimeout = tt.stall
			f, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			digest, err := f.Fetch(ctx, p.addr()+"/test/img:v1", v1.Platform{})
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			checkStore(t, dir, digest, img)
			ratio := float64(p.down.Load()) / float64(size)
			t.Logf("%d bytes through the proxy for a %d-byte image: ratio %.3f", p.down.Load(), size, ratio)
			if tt.maxRatio > 0 && ratio > tt.maxRatio {
				t.Errorf("bytes through the proxy / image size = %.3f, want ≤ %.2f", ratio, tt.maxRatio)
			}
			if (tt.stallAt > 0 || tt.stallRequest != "") && !p.stalled.Load() {
				t.Errorf("the proxy never stalled")
			}
			if tt.ignoreRng != nil && tt.ignoreRng.ranged.Load() == 0 {
				t.Errorf("no Range request reached the registry; the case tests nothing")
			}
			if tt.corrupt != nil && tt.corrupt.gets.Load() < 2 {
				t.Errorf("corrupted blob fetched %d times, want ≥ 2", tt.corrupt.gets.Load())
			}
		})
	}
}

// A fetch cancelled half-way (the agent killed) leaves partial files; a new
// Fetcher over the same directory continues from them.
func TestFetchResumesAfterRestart(t *testing.T) {
	img := testImage(t, 2, 4, 2*mb)
	size := imageSize(t, img)
	host := startRegistry(t, img, nil)
	p := newFaultProxy(t, host)
	ctx1, kill := context.WithCancel(t.Context())
	defer kill()
	dir := t.TempDir()
	var killedAt atomic.Int64
	p.onBytes = func(total int64) {
		if total < size/2 || killedAt.Load() != 0 {
			return
		}
		// From half the image on, once a layer is part-way in the store,
		// less than half of it: a kill between layers, or at a layer's
		// last bytes (which the fetcher still completes), left nothing to
		// resume (seen under make test's load: two layers whole, the
		// others not begun).
		if midLayer(filepath.Join(dir, "partial"), mb) && killedAt.CompareAndSwap(0, total) {
			kill()
		}
	}
	p.start()
	ref := p.addr() + "/test/img:v1"

	f1, err := New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f1.Fetch(ctx1, ref, v1.Platform{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("first Fetch = %v, want context.Canceled", err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "partial")); len(left) == 0 {
		// What the store held says where the kill fell.
		var held []string
		blobs, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
		for _, e := range blobs {
			if fi, err := e.Info(); err == nil {
				held = append(held, fmt.Sprintf("%.12s %d", e.Name(), fi.Size()))
			}
		}
		t.Fatalf("no partial file after the kill at %d of %d bytes through the proxy; blobs in the store: %v", killedAt.Load(), size, held)
	}
	checkBlobsVerified(t, dir)

	f2, err := New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	digest, err := f2.Fetch(ctx, ref, v1.Platform{})
	if err != nil {
		t.Fatalf("Fetch after the restart: %v", err)
	}
	checkStore(t, dir, digest, img)
	ratio := float64(p.down.Load()) / float64(size)
	t.Logf("killed at %d bytes; %d bytes in all for a %d-byte image: ratio %.3f", killedAt.Load(), p.down.Load(), size, ratio)
	if ratio > 1.1 {
		t.Errorf("bytes through the proxy / image size = %.3f, want ≤ 1.1", ratio)
	}
}

// midLayer reports whether dir holds a partial file of more than 0 and
// fewer than under bytes.
func midLayer(dir string, under int64) bool {
	part, _ := os.ReadDir(dir)
	for _, e := range part {
		if fi, err := e.Info(); err == nil && fi.Size() > 0 && fi.Size() < under {
			return true
		}
	}
	return false
}

// bodyClock wraps a transport and times the body bytes the fetcher reads.
type bodyClock struct {
	rt http.RoundTripper

	mu          sync.Mutex // guards the fields below
	first, last time.Time
	n           int64
}

func (c *bodyClock) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	if err == nil && strings.Contains(r.URL.Path, "/blobs/") {
		resp.Body = &clockedBody{ReadCloser: resp.Body, c: c}
	}
	return resp, err
}

type clockedBody struct {
	io.ReadCloser
	c *bodyClock
}

func (b *clockedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.c.mu.Lock()
		now := time.Now()
		if b.c.first.IsZero() {
			b.c.first = now
		}
		b.c.last = now
		b.c.n += int64(n)
		b.c.mu.Unlock()
	}
	return n, err
}

func TestFetchBandwidthCap(t *testing.T) {
	img := testImage(t, 3, 2, 1*mb)
	host := startRegistry(t, img, nil)
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	clock := &bodyClock{rt: cfg.Transport}
	cfg.Transport = clock
	const rate = 4 * mb
	cfg.Bandwidth = rate
	var calls []Progress
	cfg.Progress = func(p Progress) { calls = append(calls, p) }
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	digest, err := f.Fetch(ctx, host+"/test/img:v1", v1.Platform{})
	if err != nil {
		t.Fatal(err)
	}
	checkStore(t, dir, digest, img)
	elapsed := clock.last.Sub(clock.first)
	got := float64(clock.n) / elapsed.Seconds()
	t.Logf("%d bytes in %v: %.0f bytes/s, cap %d", clock.n, elapsed, got, rate)
	// Only the cap is asserted: on a loaded machine the fetch is slower
	// than its cap (make test: 3.37 MB/s against 4.19), and how close to
	// the cap it gets is a benchmark's business, not a test's.
	if got > rate*1.1 {
		t.Errorf("rate = %.0f bytes/s, over the cap %d (+10%%)", got, rate)
	}
	if len(calls) == 0 || len(calls) > int(elapsed/time.Second)+1 {
		t.Errorf("%d progress calls in %v, want 1 to one a second", len(calls), elapsed)
	}
	for _, p := range calls {
		if p.Total != imageSize(t, img)-int64(len(mustRaw(t, img))) || p.Done > p.Total {
			t.Errorf("progress %+v, want done ≤ total = config + layers", p)
		}
	}
}

func mustRaw(t *testing.T, img v1.Image) []byte {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// An index resolves to the platform's manifest; a second fetch moves no
// blob; a digest reference already in the store moves nothing.
func TestFetchIndexAndStoreHits(t *testing.T) {
	amd, arm := testImage(t, 4, 1, 256<<10), testImage(t, 5, 2, 256<<10)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	host := startRegistry(t, nil, nil)
	if err := remote.WriteIndex(mustRef(t, host+"/test/multi:v1"), idx); err != nil {
		t.Fatal(err)
	}
	p := newFaultProxy(t, host)
	p.start()
	dir := t.TempDir()
	f, err := New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	ref := p.addr() + "/test/multi:v1"
	idxDigest, _ := idx.Digest()
	armDigest, _ := arm.Digest()
	for i, want := range []struct {
		ref      string
		maxBytes int64
	}{
		{ref, imageSize(t, arm) + 16<<10},
		{ref, 16 << 10},                                     // manifests only
		{p.addr() + "/test/multi@" + idxDigest.String(), 0}, // from the store alone
		{p.addr() + "/test/multi@" + armDigest.String(), 0},
	} {
		before := p.down.Load()
		digest, err := f.Fetch(t.Context(), want.ref, v1.Platform{OS: "linux", Architecture: "arm64"})
		if err != nil {
			t.Fatalf("Fetch %d: %v", i, err)
		}
		checkStore(t, dir, digest, arm)
		if moved := p.down.Load() - before; moved > want.maxBytes {
			t.Errorf("Fetch %d (%s) moved %d bytes, want ≤ %d", i, want.ref, moved, want.maxBytes)
		}
	}
	lp, _ := layout.FromPath(dir)
	ii, _ := lp.ImageIndex()
	im, _ := ii.IndexManifest()
	if len(im.Manifests) != 3 || im.Manifests[0].Annotations[RefNameAnnotation] != mustRef(t, ref).String() {
		t.Errorf("index.json lists %+v, want three entries, the first named %s", im.Manifests, ref)
	}
}

func TestFetchPermanentErrors(t *testing.T) {
	host := startRegistry(t, nil, nil)
	f, err := New(testConfig(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{host + "/test/missing:v1", "Not A Reference"} {
		_, err := f.Fetch(t.Context(), ref, v1.Platform{})
		if err == nil {
			t.Errorf("Fetch(%q) succeeded, want an error", ref)
		}
		t.Logf("Fetch(%q): %v", ref, err)
	}
	if _, err := New(Config{}); err == nil {
		t.Errorf("New without a Store succeeded")
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Two fetches of images sharing layers, at once on one Fetcher: each shared
// blob crosses the link once.
func TestFetchSharedLayersConcurrently(t *testing.T) {
	base := testImage(t, 6, 2, 1*mb)
	var imgs []v1.Image
	for seed := range uint64(2) {
		top := testImage(t, 7+seed, 1, 1*mb)
		l, _ := top.Layers()
		img, err := mutate.AppendLayers(base, l...)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	host := startRegistry(t, nil, nil)
	for i, img := range imgs {
		if err := remote.Write(mustRef(t, fmt.Sprintf("%s/test/img%d:v1", host, i)), img); err != nil {
			t.Fatal(err)
		}
	}
	p := newFaultProxy(t, host)
	p.cutEvery = 512 << 10
	p.start()
	dir := t.TempDir()
	f, err := New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	digests := make([]v1.Hash, len(imgs))
	errs := make([]error, len(imgs))
	var wg sync.WaitGroup
	for i := range imgs {
		wg.Go(func() {
			digests[i], errs[i] = f.Fetch(ctx, fmt.Sprintf("%s/test/img%d:v1", p.addr(), i), v1.Platform{})
		})
	}
	wg.Wait()
	for i, img := range imgs {
		if errs[i] != nil {
			t.Fatalf("Fetch %d: %v", i, errs[i])
		}
		checkStore(t, dir, digests[i], img)
	}
	unique := imageSize(t, imgs[0]) + imageSize(t, imgs[1]) - 2*mb
	ratio := float64(p.down.Load()) / float64(unique)
	t.Logf("%d bytes through the proxy for %d bytes of distinct blobs: ratio %.3f", p.down.Load(), unique, ratio)
	if ratio > 1.05 {
		t.Errorf("bytes through the proxy / distinct blobs = %.3f, want ≤ 1.05", ratio)
	}
}

// A registry that lost a blob fails the fetch at once, not at the deadline.
func TestFetchMissingBlob(t *testing.T) {
	img := testImage(t, 9, 2, 64<<10)
	layers, _ := img.Layers()
	lost, _ := layers[1].Digest()
	host := startRegistry(t, img, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+lost.String()) {
				w.WriteHeader(http.StatusNotFound)
				fmt.Fprint(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"lost"}]}`)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	dir := t.TempDir()
	f, err := New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = f.Fetch(ctx, host+"/test/img:v1", v1.Platform{})
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), lost.String()) {
		t.Fatalf("Fetch = %v (ctx %v), want the lost blob's error before the deadline", err, ctx.Err())
	}
	lp, _ := layout.FromPath(dir)
	ii, _ := lp.ImageIndex()
	if im, _ := ii.IndexManifest(); len(im.Manifests) != 0 {
		t.Errorf("index.json lists %v after a failed fetch", im.Manifests)
	}
	checkBlobsVerified(t, dir)
}

// A blob that never matches its digest ends the fetch after MaxCorrupt tries
// and never enters the store.
func TestFetchGivesUpOnACorruptBlob(t *testing.T) {
	img := testImage(t, 11, 2, 64<<10)
	layers, _ := img.Layers()
	bad, _ := layers[0].Digest()
	c := &corruptOnce{digest: bad.String(), always: true}
	host := startRegistry(t, img, func(h http.Handler) http.Handler { c.h = h; return c })
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.MaxCorrupt = 2
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = f.Fetch(ctx, host+"/test/img:v1", v1.Platform{})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Fetch = %v, want a digest mismatch", err)
	}
	if got := c.gets.Load(); got != 2 {
		t.Errorf("corrupt blob fetched %d times, want MaxCorrupt = 2", got)
	}
	if f.cfg.Store.Has(bad) {
		t.Errorf("the corrupt blob entered the store")
	}
	checkBlobsVerified(t, dir)
}
