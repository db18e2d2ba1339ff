package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/fleet-agent/fleet/internal/backoff"
)

// Config configures a Fetcher. Store is required; the rest has defaults.
type Config struct {
	Store *Store
	// Keychain gives the credentials of a registry (the agent's regauth
	// keychain); nil means anonymous.
	Keychain authn.Keychain
	// Transport carries every request (private CAs, client certificates,
	// insecure registries); nil means http.DefaultTransport.
	Transport http.RoundTripper
	// NameOptions parse references (e.g. name.Insecure for plain HTTP).
	NameOptions []name.Option
	// Parallel is how many blobs download at once; 0 means 3.
	Parallel int
	// StallTimeout is how long a blob download may go without a byte before
	// it is cancelled and reconnected, and how long a ping, token or
	// manifest request (small) has to finish; 0 means 30 s.
	StallTimeout time.Duration
	// Backoff spaces the retries of a blob; zero means 500 ms doubling to 30 s.
	Backoff backoff.Policy
	// MaxCorrupt is how many digest failures of one blob end the fetch
	// (each failure refetches the blob from zero); 0 means 3.
	MaxCorrupt int
	// Bandwidth caps the bytes/s of all the downloads of the Fetcher
	// together; 0 means unlimited.
	Bandwidth int64
	// Progress is called at most once a second during a Fetch.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Fetcher downloads images into a Store, resuming cut downloads.
type Fetcher struct {
	cfg     Config
	limiter *limiter
	log     *slog.Logger
}

// New checks the config and fills its defaults.
func New(cfg Config) (*Fetcher, error) {
	if cfg.Store == nil {
		return nil, errors.New("fetch: Config.Store is nil; open one with NewStore")
	}
	if cfg.Keychain == nil {
		cfg.Keychain = authn.NewMultiKeychain()
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 3
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 30 * time.Second
	}
	if cfg.Backoff.Base <= 0 {
		cfg.Backoff = backoff.Policy{Base: 500 * time.Millisecond, Max: 30 * time.Second}
	}
	if cfg.MaxCorrupt <= 0 {
		cfg.MaxCorrupt = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Fetcher{
		cfg:     cfg,
		limiter: newLimiter(cfg.Bandwidth),
		log:     cfg.Logger.With("component", "fetch"),
	}, nil
}

// Request is one fetch. Ref is required; a zero field means the Fetcher's
// setting.
type Request struct {
	Ref string
	// Platform picks an index's manifest; zero means linux and the
	// agent's architecture.
	Platform v1.Platform
	// Keychain, Transport and NameOptions reach the registry for this
	// fetch (the agent's credential and TLS material for Ref).
	Keychain    authn.Keychain
	Transport   http.RoundTripper
	NameOptions []name.Option
	// Bandwidth caps this fetch in bytes/s, on top of the Fetcher's cap.
	Bandwidth int64
	// Progress is called at most once a second.
	Progress func(Progress)
	// Reserve is called once the manifest is known and before the first
	// byte of a blob is written, with the bytes still to download; an
	// error ends the fetch with nothing written. Release is called when
	// the fetch ends, whatever the outcome, if Reserve succeeded.
	Reserve func(ctx context.Context, need int64) (release func(), err error)
	// Skip, if set, is asked once the config is in the store which of
	// the layers (their descriptors and diff IDs, in order) need not be
	// downloaded: those the engine holds already. Skipped layers are
	// listed in Result.Skipped; the image is listed in index.json without
	// them.
	Skip func(ctx context.Context, layers []v1.Descriptor, diffIDs []v1.Hash) map[v1.Hash]bool
	// Manifest, if set, is called once the reservation is granted and the
	// manifest (and index) are in the store, before the blobs download;
	// Fetched is 0. It is not called when the store has the whole image.
	Manifest func(Result)
}

// Result is a fetched image.
type Result struct {
	// Digest is what the reference resolved to at the registry: an
	// index's digest for a multi-platform image, else the manifest's (the
	// digest `docker pull` reports).
	Digest v1.Hash
	// Manifest is the platform's image manifest, Config its config blob:
	// the engine's image ID once loaded.
	Manifest, Config v1.Hash
	// Size is the bytes of the config and the layers.
	Size int64
	// Fetched is the bytes downloaded by this fetch (resumed bytes from
	// an earlier one are not counted).
	Fetched int64
	// Skipped are the layers Request.Skip said need not be downloaded
	// and that the store does not have.
	Skipped []v1.Hash
}

// Fetch downloads the image ref for platform into the store with the
// Fetcher's settings and returns its manifest's digest; see Get.
func (f *Fetcher) Fetch(ctx context.Context, ref string, platform v1.Platform) (v1.Hash, error) {
	res, err := f.Get(ctx, Request{Ref: ref, Platform: platform})
	return res.Manifest, err
}

// Get downloads the image req.Ref (an index is resolved to the platform's
// manifest) into the store, and returns once the manifest, its config and
// its layers are all verified in the store; the store's index.json then
// lists the reference with the descriptor it resolved to. It retries until
// ctx ends; what it downloaded stays in the partial files.
func (f *Fetcher) Get(ctx context.Context, req Request) (Result, error) {
	req = f.defaults(req)
	r, err := name.ParseReference(req.Ref, req.NameOptions...)
	if err != nil {
		return Result{}, fmt.Errorf("fetch %q: %w", req.Ref, err)
	}
	log := f.log.With("ref", r.String())
	if img, ok := f.local(r, req.Platform); ok {
		err := f.cfg.Store.addImage(r.String(), img.top())
		if err == nil {
			log.Info("image already in the store", "digest", img.desc.Digest)
			return img.result(0), nil
		}
		log.Info("image no longer whole in the store; fetching it", "err", err) // GC ran meanwhile
	}
	img, err := f.resolveRetry(ctx, log, r, req)
	if err != nil {
		return Result{}, fmt.Errorf("fetch %s: %w", r, err)
	}
	// Kept from the store's GC until the image is listed.
	defer f.cfg.Store.hold(img.digests()...)()
	if req.Reserve != nil {
		release, err := req.Reserve(ctx, f.cfg.Store.Missing(img.manifest))
		if err != nil {
			return Result{}, fmt.Errorf("fetch %s: %w", r, err)
		}
		defer release()
	}
	if req.Manifest != nil {
		// The manifest first, so that it can be served while its blobs
		// arrive.
		if err := f.putManifests(img); err != nil {
			return Result{}, fmt.Errorf("fetch %s: %w", r, err)
		}
		req.Manifest(img.result(0))
	}
	var client *http.Client
	err = f.retry(ctx, log, "authenticating", func(ctx context.Context) error {
		client, err = f.client(ctx, r.Context(), req)
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("fetch %s: %w", r, err)
	}
	fetched, skipped, err := f.fetchSkipping(ctx, log, client, r.Context(), img, req)
	if err != nil {
		return Result{}, fmt.Errorf("fetch %s: %w", r, err)
	}
	if err := f.putManifests(img); err != nil {
		return Result{}, fmt.Errorf("fetch %s: %w", r, err)
	}
	if err := f.cfg.Store.addImage(r.String(), img.top(), skipped...); err != nil {
		return Result{}, fmt.Errorf("fetch %s: %w", r, err)
	}
	log.Info("image fetched", "digest", img.desc.Digest, "bytes", fetched, "skipped_layers", len(skipped))
	res := img.result(fetched)
	res.Skipped = skipped
	return res, nil
}

// fetchSkipping downloads the image's blobs: with req.Skip, the config
// first, then the layers Skip does not rule out. It returns the bytes
// downloaded and the layers skipped.
func (f *Fetcher) fetchSkipping(ctx context.Context, log *slog.Logger, client *http.Client, repo name.Repository, img *resolved, req Request) (int64, []v1.Hash, error) {
	if req.Skip == nil {
		n, err := f.fetchBlobs(ctx, log, client, repo, img.blobs(), req)
		return n, nil, err
	}
	n, err := f.fetchBlobs(ctx, log, client, repo, []v1.Descriptor{img.manifest.Config}, req)
	if err != nil {
		return n, nil, err
	}
	raw, err := f.cfg.Store.Path().Bytes(img.manifest.Config.Digest)
	if err != nil {
		return n, nil, err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return n, nil, fmt.Errorf("config %s: %w", img.manifest.Config.Digest, err)
	}
	var want []v1.Descriptor
	var skipped []v1.Hash
	if len(cfg.RootFS.DiffIDs) == len(img.manifest.Layers) {
		skip := req.Skip(ctx, img.manifest.Layers, cfg.RootFS.DiffIDs)
		for _, l := range img.manifest.Layers {
			if skip[l.Digest] && !f.cfg.Store.Has(l.Digest) {
				skipped = append(skipped, l.Digest)
				continue
			}
			want = append(want, l)
		}
	} else {
		want = img.manifest.Layers
	}
	m, err := f.fetchBlobs(ctx, log, client, repo, want, req)
	return n + m, skipped, err
}

// putManifests stores the image's manifest and index, if any.
func (f *Fetcher) putManifests(img *resolved) error {
	if err := f.cfg.Store.put(img.desc.Digest, img.raw); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if img.index != nil {
		if err := f.cfg.Store.put(img.index.Digest, img.indexRaw); err != nil {
			return fmt.Errorf("index: %w", err)
		}
	}
	return nil
}

// Resolve reads what req.Ref resolves to at the registry (the digest and
// the sizes; Fetched is 0) without downloading a blob.
func (f *Fetcher) Resolve(ctx context.Context, req Request) (Result, error) {
	req = f.defaults(req)
	r, err := name.ParseReference(req.Ref, req.NameOptions...)
	if err != nil {
		return Result{}, fmt.Errorf("resolve %q: %w", req.Ref, err)
	}
	img, err := f.resolveRetry(ctx, f.log.With("ref", r.String()), r, req)
	if err != nil {
		return Result{}, fmt.Errorf("resolve %s: %w", r, err)
	}
	return img.result(0), nil
}

// defaults fills the zero fields of req with the Fetcher's settings.
func (f *Fetcher) defaults(req Request) Request {
	if req.Platform.OS == "" {
		req.Platform = v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	if req.Keychain == nil {
		req.Keychain = f.cfg.Keychain
	}
	if req.Transport == nil {
		req.Transport = f.cfg.Transport
	}
	if req.NameOptions == nil {
		req.NameOptions = f.cfg.NameOptions
	}
	if req.Progress == nil {
		req.Progress = f.cfg.Progress
	}
	return req
}

func (f *Fetcher) resolveRetry(ctx context.Context, log *slog.Logger, r name.Reference, req Request) (*resolved, error) {
	var img *resolved
	err := f.retry(ctx, log, "resolving the manifest", func(ctx context.Context) error {
		var err error
		img, err = f.resolve(ctx, r, req)
		return err
	})
	return img, err
}

// resolved is an image manifest read from the registry, and the index it
// was found in, if any (stored too, so that the index's digest resolves
// from the store later).
type resolved struct {
	desc     v1.Descriptor // of the manifest
	raw      []byte
	manifest *v1.Manifest
	index    *v1.Descriptor
	indexRaw []byte
}

func (r *resolved) blobs() []v1.Descriptor {
	return append([]v1.Descriptor{r.manifest.Config}, r.manifest.Layers...)
}

// digests are every blob of the image, its manifest and index included.
func (r *resolved) digests() []v1.Hash {
	hs := []v1.Hash{r.desc.Digest}
	if r.index != nil {
		hs = append(hs, r.index.Digest)
	}
	for _, b := range r.blobs() {
		hs = append(hs, b.Digest)
	}
	return hs
}

// top is the descriptor the reference resolved to: the index, if any.
func (r *resolved) top() v1.Descriptor {
	if r.index != nil {
		return *r.index
	}
	return r.desc
}

func (r *resolved) result(fetched int64) Result {
	res := Result{Digest: r.top().Digest, Manifest: r.desc.Digest, Config: r.manifest.Config.Digest, Fetched: fetched}
	for _, b := range r.blobs() {
		res.Size += b.Size
	}
	return res
}

// resolve reads the manifest of ref, going through an index to the
// platform's manifest.
func (f *Fetcher) resolve(ctx context.Context, ref name.Reference, req Request) (*resolved, error) {
	platform := req.Platform
	desc, err := remote.Get(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(req.Keychain),
		remote.WithTransport(req.Transport), remote.WithPlatform(platform))
	if err != nil {
		return nil, err
	}
	img, err := desc.Image()
	if err != nil {
		return nil, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	res := &resolved{desc: v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: d}, raw: raw, manifest: m}
	if desc.MediaType.IsIndex() {
		res.desc.Platform = &platform
		res.index, res.indexRaw = &desc.Descriptor, desc.Manifest
	}
	return res, nil
}

// client is an HTTP client for the blobs of repo: authenticated with the
// keychain's credentials for it (Bearer token flow included).
func (f *Fetcher) client(ctx context.Context, repo name.Repository, req Request) (*http.Client, error) {
	auth, err := authn.Resolve(ctx, req.Keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, req.Transport,
		[]string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: rt}, nil
}

// fetchBlobs downloads the blobs not yet in the store, Parallel at a time,
// and returns the bytes it downloaded. It returns the first error after
// every download has stopped.
func (f *Fetcher) fetchBlobs(ctx context.Context, log *slog.Logger, client *http.Client, repo name.Repository, blobs []v1.Descriptor, req Request) (int64, error) {
	prog := &progress{fn: req.Progress}
	limits := []*limiter{f.limiter}
	if own := newLimiter(req.Bandwidth); own != nil {
		limits = append(limits, own)
	}
	var fetched atomic.Int64
	for _, b := range blobs {
		prog.total += b.Size
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, f.cfg.Parallel)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	seen := map[v1.Hash]bool{}
	for _, b := range blobs {
		if seen[b.Digest] {
			prog.total -= b.Size
			continue
		}
		seen[b.Digest] = true
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				errOnce.Do(func() { firstErr = ctx.Err() })
				return
			}
			bl := &blob{f: f, log: log.With("digest", b.Digest), client: client, repo: repo, desc: b, prog: prog, limits: limits, fetched: &fetched}
			if err := bl.fetch(ctx); err != nil {
				errOnce.Do(func() { firstErr = err })
				cancel()
			}
		})
	}
	wg.Wait()
	return fetched.Load(), firstErr
}

// retry calls op until it succeeds, fails for good, or ctx ends. op makes
// small requests (ping, token, manifests): each try has StallTimeout to
// finish, so a stalled link is reconnected as a blob download is.
func (f *Fetcher) retry(ctx context.Context, log *slog.Logger, what string, op func(context.Context) error) error {
	for n := 0; ; n++ {
		if err := waitCtx(ctx, f.cfg.Backoff.Delay(n)); err != nil {
			return err
		}
		tctx, cancel := context.WithTimeout(ctx, f.cfg.StallTimeout)
		err := op(tctx)
		cancel()
		if err == nil || permanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (gave up: %w)", what, err, ctx.Err())
		}
		log.Warn("retrying", "step", what, "attempt", n+1, "err", err)
	}
}

// permanent reports errors that retrying does not fix: the registry refused
// the credentials or does not have the image.
func permanent(err error) bool {
	var terr *transport.Error
	if errors.As(err, &terr) {
		s := terr.StatusCode
		return s >= 400 && s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests
	}
	return false
}

func waitCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
