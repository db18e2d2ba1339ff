// Package simfleet runs simulated gateways: the real agent code (package
// gateway) on the fake container engine, each with its own MQTT
// connection and state directory, many in one process. Their births say
// simulated: true.
package simfleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/gateway"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config configures a Fleet.
type Config struct {
	BrokerURL *url.URL
	Tenant    string
	// Prefix of the gateway ids: {Prefix}{n}, n from 1 ("sim-" when empty).
	Prefix string
	Count  int
	// Password of every simulated gateway (username and client id are
	// "{tenant}/{id}"); empty for a broker without authentication.
	Password []byte
	// Labels of gateway n (1-based); by default site=site-{n%10},
	// tier=canary for every 20th, else tier=main.
	Labels func(n int) map[string]string
	Groups []string
	// CommandKeys are the tenant's command-signing keys: the gateways run
	// only commands signed with one (nil: any command, insecure).
	CommandKeys *cmdsig.Verifier
	// StateDir holds one directory per gateway.
	StateDir string
	Scheme   topic.Scheme
	Encoding codec.Encoding

	// PullTime is how long a pull takes; FailureRate the share of pulls
	// that fail (REGISTRY_UNREACHABLE); CrashRate the share of started
	// containers that crash (exit 1) within CrashAfter (10 s when zero).
	PullTime time.Duration
	// ImageBytes is the size of every image (the fake engine's 10 MiB when
	// 0); LinkRate, in bytes per second, is each gateway's simulated link:
	// with it a pull takes ImageBytes/LinkRate more than PullTime, so that
	// pull time grows with the image.
	ImageBytes  int64
	LinkRate    int64
	FailureRate float64
	CrashRate   float64
	CrashAfter  time.Duration
	// BadImage: pulls of images whose reference contains it fail with
	// probability BadRate (1 when 0), for releases that are bad on some
	// gateways only.
	BadImage string
	BadRate  float64
	// MetricsInterval of each gateway (1 minute when zero).
	MetricsInterval time.Duration
	Logger          *slog.Logger
}

// Fleet is a running simulated fleet.
type Fleet struct {
	cfg     Config
	keys    *credential.Keys // every gateway's at-rest key and sealing key pair
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	ids     []string
	errs    []error
	engines []*engine.Fake // guarded by mu
}

// DefaultLabels are the labels of simulated gateway n.
func DefaultLabels(n int) map[string]string {
	tier := "main"
	if n%20 == 0 {
		tier = "canary"
	}
	return map[string]string{"site": fmt.Sprintf("site-%d", n%10), "tier": tier, "simulated": "true"}
}

// Start starts cfg.Count gateways and returns once each has begun
// connecting; their births follow as the broker takes them.
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.BrokerURL == nil || cfg.StateDir == "" || cfg.Count <= 0 {
		return nil, errors.New("simfleet: BrokerURL, StateDir and a positive Count are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sim-"
	}
	if cfg.Labels == nil {
		cfg.Labels = DefaultLabels
	}
	if cfg.CrashAfter <= 0 {
		cfg.CrashAfter = 10 * time.Second
	}
	if cfg.MetricsInterval <= 0 {
		cfg.MetricsInterval = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("simfleet: %w", err)
	}
	keys, err := credential.LoadKeys(filepath.Join(cfg.StateDir, "at-rest.key"), filepath.Join(cfg.StateDir, "seal.key"))
	if err != nil {
		return nil, fmt.Errorf("simfleet: the gateways' keys: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &Fleet{cfg: cfg, keys: keys, cancel: cancel}
	errs := make([]error, cfg.Count)
	var next atomic.Int64
	var workers sync.WaitGroup
	for range min(cfg.Count, startWorkers) {
		workers.Go(func() {
			for n := int(next.Add(1)); n <= cfg.Count && ctx.Err() == nil; n = int(next.Add(1)) {
				if errs[n-1] = f.start(runCtx, n); errs[n-1] != nil {
					next.Store(int64(cfg.Count)) // stop the other workers
				}
			}
		})
	}
	workers.Wait()
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		f.Close()
		return nil, err
	}
	for n := 1; n <= cfg.Count; n++ {
		f.ids = append(f.ids, fmt.Sprintf("%s%d", cfg.Prefix, n))
	}
	return f, nil
}

// startWorkers is how many gateways Start builds at once. Building one
// waits on the disk (its state directory, key files and bbolt store are
// created and synced); one after the other, 5,000 took tens of seconds
// before the last one connected, where real gateways start independently.
const startWorkers = 32

// start builds gateway n and runs it until ctx ends.
func (f *Fleet) start(ctx context.Context, n int) error {
	id := fmt.Sprintf("%s%d", f.cfg.Prefix, n)
	g, err := f.newGateway(n, id)
	if err != nil {
		return fmt.Errorf("simulated gateway %s: %w", id, err)
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := g.Run(ctx); err != nil {
			f.mu.Lock()
			f.errs = append(f.errs, fmt.Errorf("%s: %w", id, err))
			f.mu.Unlock()
		}
	}()
	return nil
}

// newEngine is gateway n's fake engine, with the fleet's pull time,
// image size, link, failure and crash rates.
func newEngine(cfg Config, n int, id string) *engine.Fake {
	eng := engine.NewFake(cfg.Tenant + "/" + id)
	eng.AnyImage, eng.PullDelay = true, cfg.PullTime
	if cfg.ImageBytes > 0 {
		eng.Size = cfg.ImageBytes
	}
	if cfg.LinkRate > 0 {
		eng.PullDelay += time.Duration(float64(eng.Size) / float64(cfg.LinkRate) * float64(time.Second))
	}
	rng := rand.New(rand.NewPCG(uint64(n), 0x5eed))
	var mu sync.Mutex
	roll := func(p float64) bool {
		mu.Lock()
		defer mu.Unlock()
		return p > 0 && rng.Float64() < p
	}
	if cfg.FailureRate > 0 || cfg.BadImage != "" {
		eng.FailPull = func(_ context.Context, ref string) error {
			if cfg.BadImage != "" && strings.Contains(ref, cfg.BadImage) && (cfg.BadRate == 0 || roll(cfg.BadRate)) {
				return fmt.Errorf("%w: simulated bad release %s", errdefs.ErrNotFound, ref)
			}
			if roll(cfg.FailureRate) {
				return fmt.Errorf("%w: simulated failure pulling %s", errdefs.ErrRegistryUnreachable, ref)
			}
			return nil
		}
	}
	if cfg.CrashRate > 0 {
		eng.Crash = func(*fleetv1.DeploymentSpec) (time.Duration, int, bool) {
			if !roll(cfg.CrashRate) {
				return 0, 0, false
			}
			mu.Lock()
			after := time.Duration(rng.Int64N(int64(cfg.CrashAfter)))
			mu.Unlock()
			return after, 1, true
		}
	}
	return eng
}

func (f *Fleet) newGateway(n int, id string) (*gateway.Gateway, error) {
	cfg := f.cfg
	eng := newEngine(cfg, n, id)
	f.mu.Lock()
	f.engines = append(f.engines, eng)
	f.mu.Unlock()
	dir := filepath.Join(cfg.StateDir, id)
	var user string
	if len(cfg.Password) > 0 {
		user = cfg.Tenant + "/" + id
	}
	return gateway.New(gateway.Config{
		Tenant: cfg.Tenant, ID: id, Scheme: cfg.Scheme, Encoding: cfg.Encoding, StateDir: dir,
		Labels: cfg.Labels(n), Groups: cfg.Groups,
		BrokerURL: cfg.BrokerURL, Username: user, Password: cfg.Password,
		KeepAlive: time.Minute, SessionExpiry: 24 * time.Hour,
		Backoff: backoff.Policy{Base: 500 * time.Millisecond, Max: 30 * time.Second},
		Keys:    f.keys,
		Engine:  eng, EngineInfo: eng.Info, ImageGC: true, RequireSealed: true, CommandKeys: cfg.CommandKeys,
		RegistryCertsDir: filepath.Join(dir, "certs.d"), ECRToken: awsecr.Fetch,
		MetricsInterval: cfg.MetricsInterval, ShutdownTimeout: 5 * time.Second,
		Version: "simulated", Simulated: true, Logger: cfg.Logger.With("gateway", id),
	})
}

// Pulls is how many image pulls the gateways' engines have begun so far:
// a test tells by it that a prefetched image was not pulled again.
func (f *Fleet) Pulls() int {
	f.mu.Lock()
	engines := slices.Clone(f.engines)
	f.mu.Unlock()
	n := 0
	for _, e := range engines {
		n += e.Pulls()
	}
	return n
}

// IDs are the gateways' ids.
func (f *Fleet) IDs() []string { return f.ids }

// Close stops every gateway (each publishes its death) and returns the
// errors they stopped with.
func (f *Fleet) Close() error {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}
