// Package gateway is the agent: it owns the state store, the MQTT link and
// the command processor, publishes the birth on every connect and the death
// on shutdown, and sends the metrics heartbeat.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/delivery"
	"github.com/fleet-agent/fleet/agent/fetch"
	"github.com/fleet-agent/fleet/agent/handlers"
	"github.com/fleet-agent/fleet/agent/hostinfo"
	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/agent/regauth"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/agent/trust"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// ProtocolVersion is the wire protocol version this agent speaks.
const ProtocolVersion = 1

// Config configures a Gateway.
type Config struct {
	Tenant   string
	ID       string
	Scheme   topic.Scheme
	Encoding codec.Encoding // of the agent's own publications
	StateDir string
	Labels   map[string]string
	Groups   []string

	BrokerURL     *url.URL
	ClientID      string // "{tenant}/{id}" when empty
	Username      string
	Password      []byte
	TLS           *tls.Config
	KeepAlive     time.Duration
	SessionExpiry time.Duration
	Backoff       backoff.Policy

	// Engine runs the containers; EngineInfo describes it for the birth
	// and must not wait for the engine (engine.Facts.Get); OnConnect, if
	// set, is called after every (re)connect (engine.Facts.Refresh).
	Engine     reconcile.Engine
	EngineInfo func(context.Context) *fleetv1.Engine
	OnConnect  func()
	Policy     reconcile.Policy
	ImageGC    bool
	// ResourcePrefix: reconcile.Config.ResourcePrefix.
	ResourcePrefix string
	// Pull configures pull mode AGENT.
	Pull PullConfig
	// Logs configures the logs verbs, served when Engine implements
	// logs.Engine.
	Logs LogsConfig
	// TrustPolicy, when set, is the image trust policy every image is
	// checked against before a container is created from it.
	TrustPolicy *trust.Policy
	// RequireSealed refuses registry credentials sent in plaintext.
	RequireSealed bool
	// AtRestKey is the path of the key that encrypts secrets in the state
	// file; "" means at-rest.key in the state directory, created if missing.
	AtRestKey string
	// Keys, when set, are the at-rest key and sealing key pair, instead of
	// AtRestKey and seal.key in the state directory: the simulated
	// gateways of one fleet share one set, so that starting 10,000 does
	// not create and sync 20,000 key files.
	Keys *credential.Keys
	// RegistryCertsDir is the engine's per-registry certificate directory
	// (regauth.DefaultCertsDir when empty); ExpiryWarning is how long
	// before an ecr-token expires the agent warns.
	RegistryCertsDir string
	ExpiryWarning    time.Duration
	// InsecureRegistry reports whether the engine pulls from a host
	// without verified TLS (nil, or an error: loopback hosts only).
	InsecureRegistry func(ctx context.Context, host string) (bool, error)
	// ECRToken gets new tokens for ecr credentials (the agent runs the
	// fleet-agent-ecr helper; simulated gateways call the SDK in process);
	// nil refuses ecr credentials when a pull needs one.
	ECRToken credential.TokenSource

	// CommandKeys, when set, are the only keys whose signed commands run
	// (command.Config.Verifier); nil runs unsigned commands: insecure.
	CommandKeys *cmdsig.Verifier
	// CommandKeysFile, when set, is the file CommandKeys came from: it is
	// looked at every 30 s and its keys replace CommandKeys when it changes.
	CommandKeysFile string
	CommandMaxAge   time.Duration
	CommandMaxSkew  time.Duration

	MaxPayload      int
	MetricsInterval time.Duration
	// ShutdownTimeout bounds the wait for work in progress on shutdown.
	ShutdownTimeout time.Duration

	Version   string
	Simulated bool
	Logger    *slog.Logger
	Now       func() time.Time
}

// PullConfig configures pull mode AGENT: the agent downloads images into
// its store under StateDir/images (agent/delivery).
type PullConfig struct {
	// Loopback is the engine's pull from a registry the agent serves on
	// loopback; nil (simulated gateways) leaves every pull to the engine.
	Loopback delivery.Engine
	// Mode is the default of specs that leave pull.mode unspecified.
	Mode fleetv1.Pull_Mode
	// Bandwidth caps the downloads together, bytes/s (0: unlimited).
	Bandwidth int64
	// StallTimeout reconnects a download silent this long (0: 30 s).
	StallTimeout time.Duration
	// StoreMax caps the store's size (0: no cap).
	StoreMax int64
	// AllowInsecure lists the registries whose credentials may say
	// insecure.
	AllowInsecure []string
}

// Gateway is a running agent.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	proc     *command.Processor
	rec      *reconcile.Reconciler
	keys     *credential.Keys
	keychain *regauth.Keychain
	statuses *outbox
	// link is set once, by Run, before linkSet is closed; read it only
	// after linkSet is closed (or from what Run starts after setting it).
	link      *mqttlink.Link
	linkSet   chan struct{}
	startedAt time.Time
	session   atomic.Uint64
}

// New checks cfg and opens the state store.
func New(cfg Config) (*Gateway, error) {
	if err := topic.CheckID("tenant", cfg.Tenant); err != nil {
		return nil, err
	}
	if err := topic.CheckGatewayID(cfg.ID); err != nil {
		return nil, err
	}
	for _, g := range cfg.Groups {
		if err := topic.CheckID("group", g); err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.BrokerURL == nil:
		return nil, errors.New("gateway: BrokerURL is required")
	case cfg.StateDir == "":
		return nil, errors.New("gateway: StateDir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ClientID == "" {
		cfg.ClientID = cfg.Tenant + "/" + cfg.ID
	}
	if cfg.MetricsInterval <= 0 {
		cfg.MetricsInterval = 30 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	// A simulated gateway's state file is not fsynced: thousands of them
	// share one disk, where each real gateway has its own.
	st, err := store.Open(store.Config{Path: filepath.Join(cfg.StateDir, "state.db"), NoSync: cfg.Simulated, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	if cfg.Engine == nil {
		st.Close()
		return nil, errors.New("gateway: Engine is required")
	}
	if cfg.EngineInfo == nil {
		cfg.EngineInfo = func(context.Context) *fleetv1.Engine { return &fleetv1.Engine{Name: "unknown", Reachable: true} }
	}
	if cfg.OnConnect == nil {
		cfg.OnConnect = func() {}
	}
	if cfg.AtRestKey == "" {
		cfg.AtRestKey = filepath.Join(cfg.StateDir, "at-rest.key")
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, store: st, startedAt: cfg.Now(), statuses: newOutbox(), linkSet: make(chan struct{})}
	if cfg.CommandKeys == nil {
		g.log.Warn("no command-signing keys (--command-signing-keys): this gateway runs unsigned commands from anyone who can publish on its command topics; insecure")
	} else {
		g.log.Info("commands must be signed", "keys", cfg.CommandKeys.IDs(), "max_age", cfg.CommandMaxAge)
	}
	if err := g.build(); err != nil {
		st.Close()
		return nil, err
	}
	return g, nil
}

// delivery opens the agent's image store under StateDir/images and
// returns pull mode AGENT over it.
func (g *Gateway) delivery() (*delivery.Delivery, error) {
	pc := g.cfg.Pull
	st, err := fetch.NewStore(filepath.Join(g.cfg.StateDir, "images"))
	if err != nil {
		return nil, err
	}
	log := g.cfg.Logger.With("component", "delivery")
	f, err := fetch.New(fetch.Config{Store: st, Bandwidth: pc.Bandwidth, StallTimeout: pc.StallTimeout, Logger: log})
	if err != nil {
		return nil, err
	}
	return delivery.New(delivery.Config{Store: st, Fetcher: f, Engine: pc.Loopback, Access: g.keychain.Remote,
		MaxBytes: pc.StoreMax, Logger: log})
}

// build makes the gateway's parts: keys, keychain, reconciler, and the
// command processor with its handlers.
func (g *Gateway) build() error {
	cfg := g.cfg
	var err error
	g.keys = cfg.Keys
	if g.keys == nil {
		if g.keys, err = credential.LoadKeys(cfg.AtRestKey, filepath.Join(cfg.StateDir, "seal.key")); err != nil {
			return err
		}
	}
	g.keychain, err = regauth.NewKeychain(regauth.KeychainConfig{Store: g.store, Cipher: g.keys,
		CertsDir: cfg.RegistryCertsDir, ExpiryWarning: cfg.ExpiryWarning, Event: g.event, Insecure: cfg.InsecureRegistry,
		ECRToken: cfg.ECRToken, AllowInsecure: cfg.Pull.AllowInsecure,
		Logger: cfg.Logger.With("component", "regauth"), Now: cfg.Now})
	if err != nil {
		return err
	}
	rcfg := reconcile.Config{
		Engine: cfg.Engine, Store: g.store, Policy: cfg.Policy, ImageGC: cfg.ImageGC, ResourcePrefix: cfg.ResourcePrefix, Auth: g.keychain.Auth, Refresh: g.keychain.Refresh,
		Publish: g.publishStatus, Event: g.event,
		Logger: cfg.Logger.With("component", "reconcile"), Now: cfg.Now,
	}
	if cfg.TrustPolicy != nil {
		rcfg.Trust = trust.NewVerifier(cfg.TrustPolicy, g.keychain.Remote).Check
	}
	if cfg.Pull.Loopback != nil {
		d, err := g.delivery()
		if err != nil {
			return err
		}
		rcfg.Delivery, rcfg.PullMode = d, cfg.Pull.Mode
	}
	g.rec, err = reconcile.New(rcfg)
	if err != nil {
		return err
	}
	verbs, err := handlers.New(handlers.Config{Deployments: g.rec, Services: g.rec, Credentials: g.keychain,
		OpenSealed: g.keys.OpenSealed, RequireSealed: cfg.RequireSealed})
	if err != nil {
		return err
	}
	verbs[topic.Rebirth] = g.rebirth
	if err := g.addLogs(verbs); err != nil {
		return err
	}
	g.proc, err = command.New(command.Config{
		Scheme: cfg.Scheme, Tenant: cfg.Tenant, Gateway: cfg.ID,
		Journal: g.store, Publisher: publisher{g}, MaxPayload: cfg.MaxPayload, Cipher: g.keys,
		Verifier: cfg.CommandKeys, MaxAge: cfg.CommandMaxAge, MaxSkew: cfg.CommandMaxSkew,
		Encoding: cfg.Encoding, Now: cfg.Now, Logger: cfg.Logger.With("component", "command"),
		Handlers: verbs,
	})
	return err
}

// publisher lets the processor publish before the link exists: the
// processor answers commands it cannot resume already in New, before Run
// has made the link; such a publication waits for the link, bounded by ctx.
type publisher struct{ g *Gateway }

func (p publisher) Publish(ctx context.Context, m mqttlink.Message) error {
	select {
	case <-p.g.linkSet:
	case <-ctx.Done():
		return fmt.Errorf("not connected yet: %w", ctx.Err())
	}
	return p.g.link.Publish(ctx, m)
}

// Run connects and serves until ctx ends, then publishes a SHUTDOWN death,
// disconnects cleanly and closes the store. It returns nil on a clean stop.
func (g *Gateway) Run(ctx context.Context) error {
	defer g.store.Close()
	linkCtx, cancelLink := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelLink()

	subs := []string{g.cfg.Scheme.CommandFilter(g.cfg.Tenant, g.cfg.ID)}
	for _, grp := range g.cfg.Groups {
		subs = append(subs, g.cfg.Scheme.GroupCommandFilter(g.cfg.Tenant, grp))
	}
	link, err := mqttlink.New(mqttlink.Config{
		BrokerURL: g.cfg.BrokerURL, ClientID: g.cfg.ClientID, Username: g.cfg.Username, Password: g.cfg.Password,
		TLS: g.cfg.TLS, KeepAlive: g.cfg.KeepAlive, SessionExpiry: g.cfg.SessionExpiry, Backoff: g.cfg.Backoff,
		MaxPacketSize: maxPacketSize(g.cfg.MaxPayload),
		Subscriptions: subs,
		Will:          g.will,
		Birth:         g.birthMessage,
		OnReady:       func(ctx context.Context) { g.cfg.OnConnect(); g.proc.Redeliver(ctx) },
		OnMessage:     g.proc.Receive,
		Logger:        g.log.With("component", "mqtt"),
	})
	if err != nil {
		return err
	}
	g.link = link
	close(g.linkSet)
	if err := link.Connect(linkCtx); err != nil {
		return err
	}
	g.log.Info("fleet-agent started", "tenant", g.cfg.Tenant, "gateway", g.cfg.ID, "broker", g.cfg.BrokerURL.Redacted(), "version", g.cfg.Version)

	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.proc.Run(workCtx) })
	wg.Go(func() { g.heartbeat(workCtx) })
	wg.Go(func() { g.statuses.run(workCtx, g.log, g.sendStatus) })
	wg.Go(func() { g.rec.Watch(workCtx) })
	wg.Go(func() { g.keychain.Run(workCtx) })
	if g.cfg.CommandKeys != nil && g.cfg.CommandKeysFile != "" {
		wg.Go(func() { watchKeys(workCtx, g.log, g.cfg.CommandKeysFile, g.cfg.CommandKeys) })
	}

	<-ctx.Done()
	g.log.Info("shutting down")
	stopWork()
	g.rec.Shutdown()
	waitTimeout(&wg, g.cfg.ShutdownTimeout)

	closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	death, err := g.deathMessage(fleetv1.Death_SHUTDOWN)
	if err != nil {
		return err
	}
	if err := link.Close(closeCtx, &death); err != nil {
		g.log.Warn("disconnect", "err", err)
	}
	g.log.Info("stopped")
	return nil
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// packetHeadroom is what a command's packet holds besides its payload: the
// fixed header, the topic, the response topic, correlation data, content
// type and user properties (a signature).
const packetHeadroom = 16 << 10

// maxPacketSize is the MQTT Maximum Packet Size the agent advertises: a
// command of maxPayload bytes and its headroom. The broker drops anything
// larger instead of sending it; a payload between the two still arrives
// and is refused with a reply that says so.
func maxPacketSize(maxPayload int) uint32 {
	if maxPayload <= 0 {
		maxPayload = command.DefaultMaxPayload
	}
	return uint32(min(maxPayload+packetHeadroom, 1<<28-1)) // MQTT's largest packet: 256 MiB
}

// will is called before every connection attempt: it takes the next session
// number and returns the death that the broker publishes if this connection
// is lost.
func (g *Gateway) will() (mqttlink.Message, error) {
	n, err := g.store.NextSession()
	if err != nil {
		// Keep connecting: a gateway with a full disk still needs to be
		// reachable. The counter stays monotonic within this process.
		n = g.session.Load() + 1
		g.log.Error("persist session counter; continuing with an in-memory counter", "session", n, "err", err)
	}
	g.session.Store(n)
	return g.deathMessage(fleetv1.Death_CONNECTION_LOST)
}

func (g *Gateway) deathMessage(reason fleetv1.Death_Reason) (mqttlink.Message, error) {
	d := &fleetv1.Death{GatewayId: g.cfg.ID, Tenant: g.cfg.Tenant, Session: g.session.Load(), Reason: reason, Timestamp: timestamppb.New(g.cfg.Now())}
	return g.message(g.cfg.Scheme.Death(g.cfg.Tenant, g.cfg.ID), d, true)
}

func (g *Gateway) birthMessage() (mqttlink.Message, error) {
	return g.message(g.cfg.Scheme.Birth(g.cfg.Tenant, g.cfg.ID), g.Birth(), true)
}

func (g *Gateway) message(t string, m proto.Message, retain bool) (mqttlink.Message, error) {
	b, err := codec.Marshal(g.cfg.Encoding, m)
	if err != nil {
		return mqttlink.Message{}, err
	}
	return mqttlink.Message{Topic: t, Payload: b, QoS: 1, Retain: retain, ContentType: g.cfg.Encoding.ContentType()}, nil
}

// Birth returns the birth certificate of the current session.
func (g *Gateway) Birth() *fleetv1.Birth {
	caps := []string{"protobuf", "json", "sealed-credentials"}
	if g.cfg.TrustPolicy != nil {
		caps = append(caps, "image-trust-policy")
	}
	for _, v := range g.proc.Verbs() {
		caps = append(caps, string(v))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var deps []*fleetv1.DeploymentSummary
	for _, st := range g.rec.Statuses() {
		deps = append(deps, &fleetv1.DeploymentSummary{Name: st.GetName(), Revision: st.GetRevision(), Phase: st.GetPhase(), Image: st.GetImage(), Digest: st.GetImageDigest()})
	}
	return &fleetv1.Birth{
		Engine: g.cfg.EngineInfo(ctx), Deployments: deps,
		GatewayId: g.cfg.ID, Tenant: g.cfg.Tenant, Session: g.session.Load(),
		AgentVersion: g.cfg.Version, ProtocolVersion: ProtocolVersion,
		StartedAt: timestamppb.New(g.startedAt), Timestamp: timestamppb.New(g.cfg.Now()),
		Host: hostinfo.Facts(), Labels: maps.Clone(g.cfg.Labels), Groups: slices.Clone(g.cfg.Groups),
		Capabilities: caps, Simulated: g.cfg.Simulated,
		PublicKey: g.keys.PublicKey(), Registries: g.keychain.Summaries(),
	}
}

// rebirth republishes the birth (and, once deployments exist, every status).
func (g *Gateway) rebirth(ctx context.Context, _ *command.Exec) error {
	m, err := g.birthMessage()
	if err != nil {
		return err
	}
	if err := g.link.Publish(ctx, m); err != nil {
		return fmt.Errorf("publish birth: %w", err)
	}
	g.rec.Republish(ctx)
	return nil
}

// publishStatus queues a deployment's status (nil clears it); the newest
// status of each deployment is published once the link is ready.
func (g *Gateway) publishStatus(_ context.Context, name string, st *fleetv1.DeploymentStatus) {
	g.statuses.put(name, st)
}

func (g *Gateway) sendStatus(ctx context.Context, name string, st *fleetv1.DeploymentStatus) error {
	t := g.cfg.Scheme.Status(g.cfg.Tenant, g.cfg.ID, name)
	if st == nil {
		return g.link.Publish(ctx, mqttlink.Message{Topic: t, QoS: 1, Retain: true})
	}
	m, err := g.message(t, st, true)
	if err != nil {
		return err
	}
	return g.link.Publish(ctx, m)
}

func (g *Gateway) event(e *fleetv1.Event) { g.proc.Event(e) }

func (g *Gateway) heartbeat(ctx context.Context) {
	t := time.NewTicker(g.cfg.MetricsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := g.cfg.Now()
		m := &fleetv1.Metrics{GatewayId: g.cfg.ID, Session: g.session.Load(), Timestamp: timestamppb.New(now),
			UptimeSeconds: uint64(now.Sub(g.startedAt) / time.Second)}
		hostinfo.Sample(m, g.cfg.StateDir)
		for _, st := range g.rec.Statuses() {
			m.DeploymentCount++
			if st.GetPhase() == fleetv1.DeploymentStatus_RUNNING {
				m.RunningCount++
			}
		}
		msg, err := g.message(g.cfg.Scheme.Metrics(g.cfg.Tenant, g.cfg.ID), m, false)
		if err != nil {
			continue
		}
		msg.QoS = 0
		pctx, cancel := context.WithTimeout(ctx, g.cfg.MetricsInterval)
		if err := g.link.TryPublish(pctx, msg); err != nil {
			g.log.Debug("heartbeat skipped", "err", err)
		}
		cancel()
	}
}
