package delivery_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleet-agent/fleet/agent/delivery"
	"github.com/fleet-agent/fleet/agent/fetch"
	"github.com/fleet-agent/fleet/agent/trust"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// engine pulls from the agent's loopback registry as dockerd would (by
// digest, every blob), and records what it got.
type engine struct {
	mu       sync.Mutex
	images   map[string]v1.Hash // name -> config digest
	from     []string           // hosts pulled from
	remote   bool               // the engine cannot reach the agent's loopback
	loadedBy []string           // names loaded from the layout
	asked    chan string        // if set, told each layer digest before it is read
	known    map[v1.Hash]bool   // diff IDs of the layers the engine holds
	forgets  bool               // the engine asks for the layers it holds anyway
}

func (e *engine) Layers(context.Context) (map[v1.Hash]bool, error) { return e.known, nil }

func (e *engine) LoadFromLayout(_ context.Context, dir string, manifest v1.Hash, tag string) error {
	img, err := layout.Path(dir).Image(manifest)
	if err != nil {
		// A platform's manifest listed through an index: read it as a blob.
		raw, rerr := layout.Path(dir).Bytes(manifest)
		if rerr != nil {
			return err
		}
		m, perr := v1.ParseManifest(bytes.NewReader(raw))
		if perr != nil {
			return perr
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		e.images[tag], e.loadedBy = m.Config.Digest, append(e.loadedBy, tag)
		return nil
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.images[tag], e.loadedBy = cfg, append(e.loadedBy, tag)
	return nil
}

func (e *engine) PullFromLoopback(ctx context.Context, host, repo string, manifest v1.Hash, tag string) error {
	if e.remote {
		return fmt.Errorf("%w: Get \"https://%s/v2/\": dial tcp %s: connect: connection refused", errdefs.ErrRegistryUnreachable, host, host)
	}
	ref, err := name.NewDigest(host+"/"+repo+"@"+manifest.String(), name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		if diffID, _ := l.DiffID(); e.known[diffID] && !e.forgets {
			continue // as dockerd skips a layer it knows
		}
		if e.asked != nil {
			d, _ := l.Digest()
			e.asked <- d.String()
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc) // verified against its digest on close
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.images[tag] = cfg
	e.from = append(e.from, host)
	return nil
}

type env struct {
	reg   string // registry host
	eng   *engine
	d     *delivery.Delivery
	store *fetch.Store
}

func newEnv(t *testing.T, mod func(*delivery.Config)) *env {
	return newEnvWith(t, mod, nil)
}

func newEnvWith(t *testing.T, mod func(*delivery.Config), wrap func(http.Handler) http.Handler) *env {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	st, err := fetch.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.New(fetch.Config{Store: st, Backoff: backoff.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{reg: strings.TrimPrefix(srv.URL, "http://"), eng: &engine{images: map[string]v1.Hash{}}, store: st}
	cfg := delivery.Config{Store: st, Fetcher: f, Engine: e.eng,
		Access: func(context.Context, string) (trust.Access, error) {
			return trust.Access{Insecure: true, Auth: authn.Anonymous}, nil
		}}
	if mod != nil {
		mod(&cfg)
	}
	if e.d, err = delivery.New(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) push(t *testing.T, repoTag string, size int64) (ref string, img v1.Image) {
	t.Helper()
	img, err := random.Image(size, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref = e.reg + "/" + repoTag
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref, img
}

// TestPullDeliversTheVerifiedImage: the engine gets the manifest the agent
// verified, from loopback, under the image's name (a digest reference
// under repo:sha256-<hex>); the result carries the registry's digest and
// the config digest, which Local finds again for that image ID only.
func TestPullDeliversTheVerifiedImage(t *testing.T) {
	e := newEnv(t, nil)
	ref, img := e.push(t, "team/app:1", 64<<10)
	want, _ := img.Digest()
	cfg, _ := img.ConfigName()
	byDigest := e.reg + "/team/app@" + want.String()
	for _, r := range []string{ref, byDigest} {
		got, err := e.d.Pull(t.Context(), r, delivery.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Digest != want.String() || got.ID != cfg.String() {
			t.Errorf("Pull(%s) = %+v, want digest %s, id %s", r, got, want, cfg)
		}
		if e.eng.images[delivery.Name(r)] != cfg {
			t.Errorf("engine holds %v, want %s under %s", e.eng.images, cfg, delivery.Name(r))
		}
		if d, ok := e.d.Local(r, cfg.String()); !ok || d != want.String() {
			t.Errorf("Local(%s) = %s, %v; want %s", r, d, ok, want)
		}
		if _, ok := e.d.Local(r, "sha256:"+strings.Repeat("0", 64)); ok {
			t.Errorf("Local(%s) vouched for another image ID", r)
		}
	}
	if n := delivery.Name(byDigest); n != e.reg+"/team/app:sha256-"+want.Hex {
		t.Errorf("Name(%s) = %s", byDigest, n)
	}
	for _, h := range e.eng.from {
		if !strings.HasPrefix(h, "127.0.0.1:") {
			t.Errorf("the engine pulled from %s, want loopback", h)
		}
	}
	if digest, size, err := e.d.Resolve(t.Context(), ref); err != nil || digest != want.String() || size <= 64<<10 {
		t.Errorf("Resolve = %s, %d, %v", digest, size, err)
	}
}

// TestEnginePullsBesideTheFetch: the engine's pull from loopback starts
// once the manifest is stored, and is served each blob as soon as it is
// verified: with the last layer's download held back, the engine has
// already asked for it; released, one loopback pull completes.
func TestEnginePullsBesideTheFetch(t *testing.T) {
	release := make(chan struct{})
	var held atomic.Bool
	var e *env
	var heldDigest string
	e = newEnvWith(t, nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if heldDigest != "" && strings.HasSuffix(r.URL.Path, "/blobs/"+heldDigest) && held.CompareAndSwap(false, true) {
				<-release
			}
			h.ServeHTTP(w, r)
		})
	})
	e.eng.asked = make(chan string, 16)
	ref, img := e.push(t, "team/app:1", 64<<10)
	layers, _ := img.Layers()
	last, _ := layers[len(layers)-1].Digest()
	heldDigest = last.String()
	type out struct {
		img delivery.Image
		err error
	}
	res := make(chan out, 1)
	go func() {
		got, err := e.d.Pull(t.Context(), ref, delivery.Options{})
		res <- out{got, err}
	}()
	deadline := time.After(10 * time.Second)
	for asked := false; !asked; {
		select {
		case d := <-e.eng.asked:
			asked = d == heldDigest
		case <-deadline:
			t.Fatal("the engine did not ask for the last layer while its download was held back")
		}
	}
	close(release)
	o := <-res
	if o.err != nil {
		t.Fatal(o.err)
	}
	if len(e.eng.from) != 1 {
		t.Errorf("the engine pulled %d times, want once, beside the fetch", len(e.eng.from))
	}
}

// TestLayersTheEngineHolds: a layer the engine holds is not downloaded;
// if the engine asks for it anyway (it got it by a load, which leaves no
// record of the blob), the agent fetches it and the engine pulls again.
func TestLayersTheEngineHolds(t *testing.T) {
	for _, forgets := range []bool{false, true} {
		t.Run(fmt.Sprintf("engine asks anyway: %v", forgets), func(t *testing.T) {
			e := newEnv(t, nil)
			ref, img := e.push(t, "team/app:1", 256<<10)
			layers, _ := img.Layers()
			held, _ := layers[0].DiffID()
			size, _ := layers[0].Size()
			e.eng.known, e.eng.forgets = map[v1.Hash]bool{held: true}, forgets
			got, err := e.d.Pull(t.Context(), ref, delivery.Options{})
			if err != nil {
				t.Fatal(err)
			}
			total, _ := img.Manifest()
			var all int64
			for _, l := range total.Layers {
				all += l.Size
			}
			all += total.Config.Size
			want := all - size
			if forgets {
				want = all // the pull beside the download failed on the held layer
			}
			if got.Fetched != want || len(e.eng.from) != 1 {
				t.Errorf("fetched %d bytes, %d engine pulls succeeded; want %d and 1 (image %d, held layer %d)", got.Fetched, len(e.eng.from), want, all, size)
			}
			cfg, _ := img.ConfigName()
			if e.eng.images[ref] != cfg {
				t.Errorf("engine holds %v, want %s", e.eng.images, cfg)
			}
		})
	}
}

// TestLoadWhenLoopbackIsOutOfReach: an engine that cannot pull from the
// agent's loopback gets the verified image streamed in instead.
func TestLoadWhenLoopbackIsOutOfReach(t *testing.T) {
	e := newEnv(t, nil)
	e.eng.remote = true
	ref, img := e.push(t, "team/app:1", 32<<10)
	cfg, _ := img.ConfigName()
	got, err := e.d.Pull(t.Context(), ref, delivery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != cfg.String() || e.eng.images[ref] != cfg || len(e.eng.loadedBy) != 1 {
		t.Errorf("Pull = %+v; engine %v, loaded %v; want %s loaded once", got, e.eng.images, e.eng.loadedBy, cfg)
	}
}

// TestReserve: a pull that does not fit the store's cap, or the free space
// where it lives, fails with NO_SPACE naming what to change, before a blob
// is written; under the cap an image nothing keeps is trimmed to make room.
func TestReserve(t *testing.T) {
	tests := []struct {
		name     string
		max      int64
		free     uint64
		keepOld  bool
		wantErr  string
		wantTrim bool
	}{
		{name: "fits", max: 0, free: 1 << 30},
		{name: "no free space", free: 100 << 10, wantErr: "filesystem has"},
		{name: "over the cap, old image kept", max: 600 << 10, free: 1 << 30, keepOld: true, wantErr: "--pull-store-max"},
		{name: "over the cap, old image trimmed", max: 600 << 10, free: 1 << 30, wantTrim: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *delivery.Config) {
				c.MaxBytes = tt.max
				c.FreeSpace = func() (uint64, error) { return tt.free, nil }
			})
			if tt.max > 0 {
				old, _ := e.push(t, "team/old:1", 200<<10)
				if _, err := e.d.Pull(t.Context(), old, delivery.Options{}); err != nil {
					t.Fatal(err)
				}
				var keep []string
				if tt.keepOld {
					keep = []string{old}
				}
				if _, err := e.d.GC(t.Context(), keep); err != nil {
					t.Fatal(err)
				}
			}
			ref, _ := e.push(t, "team/app:1", 200<<10)
			before, _ := e.store.Usage()
			_, err := e.d.Pull(t.Context(), ref, delivery.Options{})
			if tt.wantErr != "" {
				if errdefs.Code(err) != fleetv1.Reply_NO_SPACE || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Pull = %v, want NO_SPACE mentioning %q", err, tt.wantErr)
				}
				if after, _ := e.store.Usage(); after > before {
					t.Errorf("the store grew from %d to %d bytes after a refused reservation", before, after)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if usage, _ := e.store.Usage(); tt.max > 0 && usage > tt.max {
				t.Errorf("store holds %d bytes, over its cap %d", usage, tt.max)
			}
		})
	}
}

// TestErrorsMapToCodes: the registry's answers become the protocol's codes.
func TestErrorsMapToCodes(t *testing.T) {
	tests := []struct {
		name   string
		status int
		want   fleetv1.Reply_Code
	}{
		{"unauthorized", http.StatusUnauthorized, fleetv1.Reply_UNAUTHENTICATED},
		{"forbidden", http.StatusForbidden, fleetv1.Reply_PERMISSION_DENIED},
		{"not found", http.StatusNotFound, fleetv1.Reply_NOT_FOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				fmt.Fprint(w, `{"errors":[{"code":"DENIED","message":"no"}]}`)
			}))
			t.Cleanup(srv.Close)
			e := newEnv(t, nil)
			_, err := e.d.Pull(t.Context(), strings.TrimPrefix(srv.URL, "http://")+"/team/app:1", delivery.Options{})
			if errdefs.Code(err) != tt.want {
				t.Errorf("Pull = %v (%v), want %v", err, errdefs.Code(err), tt.want)
			}
		})
	}
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := e.d.Pull(ctx, "127.0.0.1:1/team/app:1", delivery.Options{}); errdefs.Code(err) != fleetv1.Reply_REGISTRY_UNREACHABLE && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Pull from a closed port = %v, want REGISTRY_UNREACHABLE or the deadline", err)
	}
}
