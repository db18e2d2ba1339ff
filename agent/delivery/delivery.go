// Package delivery is pull mode AGENT: the agent downloads an image into its
// own store (agent/fetch: resumed after a cut or a restart, every blob
// verified by digest, bandwidth-capped, disk reserved before the first
// byte) with the gateway's credentials and TLS material, then the engine
// pulls it from a registry the agent serves on loopback for that one pull
// (agent/engine/layoutreg) and tags it with the image's name.
//
// The loopback pull was chosen over streaming the image into the engine's
// load endpoint by measurement (docs/benchmarks.md, "Issue 14"): equal on
// a clean engine, and when the engine already has most layers the pull
// reads only the new ones and takes 0.73–0.84 of the time.
package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/fleet-agent/fleet/agent/engine/layoutreg"
	"github.com/fleet-agent/fleet/agent/fetch"
	"github.com/fleet-agent/fleet/agent/trust"
)

// Engine is what delivery needs of the container engine.
type Engine interface {
	PullFromLoopback(ctx context.Context, host, repo string, manifest v1.Hash, name string) error
	// LoadFromLayout streams the image into the engine: the fallback for
	// an engine that does not share the agent's loopback (a remote
	// --docker-host, a rootless engine, an agent in a container without
	// the host's network).
	LoadFromLayout(ctx context.Context, layoutDir string, manifest v1.Hash, name string) error
	// Layers are the diff IDs of the layers the engine holds: the agent
	// does not download them.
	Layers(ctx context.Context) (map[v1.Hash]bool, error)
}

// Config configures a Delivery.
type Config struct {
	Store   *fetch.Store
	Fetcher *fetch.Fetcher
	Engine  Engine
	// Access is how to reach an image's registry: credential, TLS
	// material, plain HTTP (regauth.Keychain.Remote).
	Access trust.Remote
	// MaxBytes caps the store's size (--pull-store-max); 0: no cap.
	MaxBytes int64
	// FreeSpace is the free bytes where the store is; nil: statfs.
	FreeSpace func() (uint64, error)
	// Platform of the images (zero: linux and the agent's architecture).
	Platform v1.Platform
	Logger   *slog.Logger
}

// Delivery pulls images for the engine through the agent's store.
type Delivery struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	reserved int64           // bytes reserved by fetches in progress; guarded by mu
	keep     map[string]bool // references kept by deployments (normalised); guarded by mu
}

// New checks cfg.
func New(cfg Config) (*Delivery, error) {
	if cfg.Store == nil || cfg.Fetcher == nil || cfg.Engine == nil || cfg.Access == nil {
		return nil, errors.New("delivery: Store, Fetcher, Engine and Access are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.FreeSpace == nil {
		dir := string(cfg.Store.Path())
		cfg.FreeSpace = func() (uint64, error) {
			var st unix.Statfs_t
			if err := unix.Statfs(dir, &st); err != nil {
				return 0, fmt.Errorf("statfs %s: %w", dir, err)
			}
			return st.Bavail * uint64(st.Bsize), nil
		}
	}
	return &Delivery{cfg: cfg, log: cfg.Logger.With("component", "delivery"), keep: map[string]bool{}}, nil
}

// Image is an image delivered to the engine.
type Image struct {
	// Digest is what the registry resolved the reference to (the status's
	// imageDigest).
	Digest string
	// ID is the engine's image ID: the config digest of the manifest the
	// agent verified.
	ID string
	// Fetched is the bytes downloaded from the registry.
	Fetched int64
}

// Options are one pull's settings.
type Options struct {
	// Bandwidth caps this pull in bytes/s, on top of the agent's cap.
	Bandwidth int64
	// Progress is told the bytes done and the total, at most once a second.
	Progress func(done, total int64)
}

// Resolve returns the digest the registry resolves ref to and the image's
// compressed size, without downloading a layer.
func (d *Delivery) Resolve(ctx context.Context, ref string) (digest string, size int64, err error) {
	req, err := d.request(ctx, ref)
	if err != nil {
		return "", 0, err
	}
	res, err := d.cfg.Fetcher.Resolve(ctx, req)
	if err != nil {
		return "", 0, registryErr(err)
	}
	return res.Digest.String(), res.Size, nil
}

// Pull downloads ref into the store and has the engine hold it under
// Name(ref). The engine's pull from loopback starts as soon as the manifest
// is in the store, beside the download: the loopback registry answers each
// blob once it is verified, so the engine extracts the first layers while
// the last ones arrive. If that pull fails (the engine gave up waiting on
// a slow link), it is done again once every blob is there. Pull returns
// when the engine has the image; the engine checked every blob against
// the verified manifest as it pulled it.
func (d *Delivery) Pull(ctx context.Context, ref string, opts Options) (Image, error) {
	req, err := d.request(ctx, ref)
	if err != nil {
		return Image{}, err
	}
	req.Bandwidth = opts.Bandwidth
	if opts.Progress != nil {
		req.Progress = func(p fetch.Progress) { opts.Progress(p.Done, p.Total) }
	}
	req.Reserve = d.reserve
	skips := &skipped{decided: make(chan struct{})}
	req.Skip = d.skipKnown(skips)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	manifest := make(chan fetch.Result, 1)
	req.Manifest = func(r fetch.Result) { manifest <- r }
	type fetched struct {
		res fetch.Result
		err error
	}
	done := make(chan fetched, 1)
	go func() {
		res, err := d.cfg.Fetcher.Get(ctx, req)
		if err != nil {
			cancel() // the engine's pull beside it stops waiting
		}
		done <- fetched{res, err}
	}()
	name := Name(ref)
	var early chan error
	var got fetched
	select {
	case r := <-manifest:
		early = make(chan error, 1)
		go func() { early <- d.loopback(ctx, r.Manifest, name, skips) }()
		got = <-done
	case got = <-done: // the store had it all, or the fetch failed early
	}
	if got.err != nil {
		if early != nil {
			<-early
		}
		return Image{}, registryErr(got.err)
	}
	if early == nil || <-early != nil {
		if len(got.res.Skipped) > 0 {
			// The engine did not skip a layer it holds after all (it had
			// it from a load, which leaves no record of the blob): fetch
			// what was skipped.
			d.log.Info("fetching the layers the engine holds but did not reuse", "image", name, "layers", len(got.res.Skipped))
			req.Skip, req.Manifest = nil, nil
			more, err := d.cfg.Fetcher.Get(ctx, req)
			if err != nil {
				return Image{}, registryErr(err)
			}
			got.res.Fetched += more.Fetched
		}
		if err := d.load(ctx, got.res.Manifest, name); err != nil {
			return Image{}, err
		}
	}
	return Image{Digest: got.res.Digest.String(), ID: got.res.Config.String(), Fetched: got.res.Fetched}, nil
}

// request is a fetch of ref with the gateway's access to its registry.
func (d *Delivery) request(ctx context.Context, ref string) (fetch.Request, error) {
	acc, err := d.cfg.Access(ctx, ref)
	if err != nil {
		return fetch.Request{}, err
	}
	req := fetch.Request{Ref: ref, Platform: d.cfg.Platform, Keychain: single{acc.Auth}}
	if acc.Transport != nil {
		req.Transport = acc.Transport
	}
	if acc.Insecure {
		req.NameOptions = []name.Option{name.Insecure}
	}
	return req, nil
}

// single is the keychain of one fetch: the credential chosen for its image.
type single struct{ auth authn.Authenticator }

func (s single) Resolve(authn.Resource) (authn.Authenticator, error) {
	if s.auth == nil {
		return authn.Anonymous, nil
	}
	return s.auth, nil
}

// load has the engine take the manifest, every blob of which is in the
// store: pulled from loopback, or streamed in when the engine cannot reach
// the agent's loopback.
func (d *Delivery) load(ctx context.Context, manifest v1.Hash, name string) error {
	perr := d.loopback(ctx, manifest, name, nil)
	if perr == nil || ctx.Err() != nil {
		return perr
	}
	d.log.Warn("the engine could not pull from the agent on loopback; streaming the image into it instead", "image", name, "err", perr)
	if err := d.cfg.Engine.LoadFromLayout(ctx, string(d.cfg.Store.Path()), manifest, name); err != nil {
		return fmt.Errorf("the engine did not take the verified image from the agent: pulling from loopback: %w; loading it: %w", perr, err)
	}
	return nil
}

// loopback has the engine pull the manifest from a registry served on
// loopback for this pull only, under a random repository name, and tag it
// name. With a download running beside it (skips not nil), a blob not in
// the store yet is answered once its download has committed it, or at
// once with 404 when it is a layer the download skipped.
func (d *Delivery) loopback(ctx context.Context, manifest v1.Hash, name string, skips *skipped) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("serving the image to the engine on loopback: %w", err)
	}
	var b [12]byte
	rand.Read(b[:])
	repo := "fleet-agent/" + hex.EncodeToString(b[:])
	reg := layoutreg.New(string(d.cfg.Store.Path()), repo)
	if skips != nil {
		reg.Wait = func(rctx context.Context, h v1.Hash) error {
			decided := skips.decided
			for {
				select {
				case <-d.cfg.Store.Ready(h):
					return nil
				case <-decided:
					if skips.has(h) {
						return fmt.Errorf("%s was not downloaded: the engine holds it", h)
					}
					decided = nil
				case <-rctx.Done():
					return rctx.Err()
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
	}
	srv := &http.Server{Handler: reg, ReadHeaderTimeout: 30 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-done
	}()
	if err := d.cfg.Engine.PullFromLoopback(ctx, ln.Addr().String(), repo, manifest, name); err != nil {
		return fmt.Errorf("the engine did not take the verified image from the agent: %w", err)
	}
	return nil
}

// skipped are the layers a download decided not to fetch; decided is
// closed once it has.
type skipped struct {
	decided chan struct{}
	mu      sync.Mutex
	layers  map[v1.Hash]bool
}

func (s *skipped) has(h v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.layers[h]
}

// skipKnown is a fetch's Skip: the layers whose diff ID the engine holds,
// recorded in s.
func (d *Delivery) skipKnown(s *skipped) func(context.Context, []v1.Descriptor, []v1.Hash) map[v1.Hash]bool {
	return func(ctx context.Context, layers []v1.Descriptor, diffIDs []v1.Hash) map[v1.Hash]bool {
		skip := map[v1.Hash]bool{}
		defer func() {
			s.mu.Lock()
			s.layers = skip
			s.mu.Unlock()
			close(s.decided)
		}()
		known, err := d.cfg.Engine.Layers(ctx)
		if err != nil {
			d.log.Debug("the engine's layers are unknown; downloading them all", "err", err)
			return skip
		}
		for i, l := range layers {
			if known[diffIDs[i]] {
				skip[l.Digest] = true
			}
		}
		return skip
	}
}

// Name is the name the engine holds ref under: ref itself when it names a
// tag; for a digest reference, the repository tagged "sha256-<hex>" (the
// engine cannot tag a digest, and a pull from loopback leaves no
// repository digest).
func Name(ref string) string {
	r, err := name.ParseReference(ref)
	if err != nil {
		return ref
	}
	if dg, ok := r.(name.Digest); ok {
		return dg.Context().Name() + ":" + strings.ReplaceAll(dg.DigestStr(), ":", "-")
	}
	return ref
}

// Local returns the registry digest the store recorded for ref when the
// engine's image imageID is the one the agent delivered for it (the
// engine keeps no repository digest for it).
func (d *Delivery) Local(ref, imageID string) (string, bool) {
	r, err := name.ParseReference(ref)
	if err != nil || imageID == "" {
		return "", false
	}
	desc, ok, err := d.cfg.Store.Lookup(r.String())
	if err != nil || !ok {
		return "", false
	}
	cfg, err := d.configOf(desc)
	if err != nil || cfg.String() != imageID {
		return "", false
	}
	return desc.Digest.String(), true
}

// configOf reads the config digest of the platform's manifest that desc
// (a manifest, or an index) leads to in the store.
func (d *Delivery) configOf(desc v1.Descriptor) (v1.Hash, error) {
	p := d.cfg.Store.Path()
	raw, err := p.Bytes(desc.Digest)
	if err != nil {
		return v1.Hash{}, err
	}
	if desc.MediaType.IsIndex() {
		im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return v1.Hash{}, err
		}
		i := slices.IndexFunc(im.Manifests, func(c v1.Descriptor) bool {
			return c.Platform == nil || c.Platform.Satisfies(d.platform())
		})
		if i < 0 {
			return v1.Hash{}, fmt.Errorf("index %s has no manifest for %s", desc.Digest, d.platform())
		}
		if raw, err = p.Bytes(im.Manifests[i].Digest); err != nil {
			return v1.Hash{}, err
		}
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return v1.Hash{}, err
	}
	return m.Config.Digest, nil
}

func (d *Delivery) platform() v1.Platform {
	if d.cfg.Platform.OS == "" {
		return v1.Platform{OS: "linux", Architecture: goarch}
	}
	return d.cfg.Platform
}
