// Package serve runs what `cloud-sim serve` runs: the MQTT broker
// (embedded, with per-gateway authentication and ACL, or an external one),
// the emulated registries of a registries file, the durable store (NATS
// JetStream, embedded or external), the fleet controller, its HTTP API,
// and optionally a simulated fleet.
package serve

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/egress"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// DefaultIngestGroup is the shared-subscription group of the controller
// replicas.
const DefaultIngestGroup = "fleet-controllers"

// Config configures Start.
type Config struct {
	// DataDir holds the broker's sessions, the embedded NATS store, the
	// controller's keys and simulated gateways' state.
	DataDir string
	// MQTTListen is the embedded broker's address; BrokerURL, when set,
	// is an external broker instead, which the controller logs in to with
	// BrokerUsername and BrokerPassword.
	MQTTListen     string
	BrokerURL      string
	BrokerUsername string
	// BrokerIngestUsername logs the controller's shared-ingest session in
	// (BrokerUsername when empty), with BrokerPassword.
	BrokerIngestUsername string
	BrokerPassword       string
	// BrokerCA, BrokerCert and BrokerKey are PEM files for an mqtts://
	// BrokerURL: the CA that signs the broker's certificate (system roots
	// when empty) and the controller's client certificate (none when
	// empty).
	BrokerCA, BrokerCert, BrokerKey string
	// BrokerDynsecLogin, with BrokerURL, is the file of the admin login
	// (username:password) of Mosquitto's dynamic security plugin: the
	// gateways' identities are then kept there too (package dynsec).
	BrokerDynsecLogin string
	// MQTTTLSListen, with MQTTTLSCert and MQTTTLSKey (PEM files), is a
	// second listener of the embedded broker serving MQTT over TLS.
	MQTTTLSListen           string
	MQTTTLSCert, MQTTTLSKey string
	// BrokerLimits bound packets and connections on the embedded broker;
	// GatewayLimits what one gateway may make the controller hold.
	BrokerLimits  broker.Limits
	GatewayLimits inventory.Limits
	// NATSURL is an external NATS (cluster; URLs comma-separated); else
	// an embedded server listens on NATSListen (loopback by default).
	NATSURL    string
	NATSListen string
	// NATSCreds is a login file (user:password, or a NATS .creds file for
	// an external NATS). With NATSURL, the login to it; embedded, the
	// server's own login, which every client must give: made on first
	// start in DataDir/nats-login (mode 0600) when empty, and reused.
	NATSCreds string
	// NATSCA, NATSCert and NATSKey are PEM files for TLS to an external
	// NATS: the CA of its certificate (TLS required when set), and a
	// client certificate and key.
	NATSCA, NATSCert, NATSKey string
	// NATSReplicas of every bucket and the work queue; 0 picks them from
	// the cluster (see state.Config.Replicas).
	NATSReplicas int
	// HTTPListen is the API's address. APIToken is the token it
	// requires; when empty, the one in DataDir's api-token file, made on
	// first start. APIInsecureNoAuth (tests only, loopback only) requires
	// none. APIAllowedHosts are Host names besides the listen address
	// ("host:port", or "host" for any port); APIMaxStreams caps
	// concurrent event streams (64 when 0).
	HTTPListen        string
	APIToken          string
	APIInsecureNoAuth bool
	APIAllowedHosts   []string
	APIMaxStreams     int
	// Registries is a registries file (see LoadRegistries); "" for none.
	Registries string
	// RegistryCheckAllow lets the cloud's registry check connect to
	// loopback, private and link-local destinations it otherwise refuses:
	// CIDR prefixes, addresses and host:port pairs (see egress.New). The
	// registries of the Registries file are added.
	RegistryCheckAllow []string
	// SecretsKey is the file of the key that encrypts credentials at rest
	// (created in DataDir when empty); replicas sharing NATS share it.
	SecretsKey string
	Scheme     topic.Scheme
	StaleAfter time.Duration
	// Retention of finished commands and rollouts (30 days when zero).
	Retention time.Duration
	// ControllerID names this replica: its MQTT client id and reply
	// topics ("controller" when empty). Replicas sharing a broker and NATS
	// need different ids, the same SecretsKey, and, on an embedded broker,
	// its ControllerPassword.
	ControllerID string
	// ControllerPassword is the embedded broker's password for user
	// "controller" (random on every start when empty).
	ControllerPassword string
	// IngestGroup is the MQTT v5 shared-subscription group through which
	// the controller replicas share what gateways publish
	// (DefaultIngestGroup when empty); SoloIngest has this replica
	// receive everything itself instead, for a broker without shared
	// subscriptions.
	IngestGroup string
	SoloIngest  bool
	// Sim, when Sim.Count > 0, runs a simulated fleet in the process,
	// provisioned on the embedded broker.
	Sim    simfleet.Config
	Logger *slog.Logger
}

// Server is a running cloud-sim.
type Server struct {
	Broker    *broker.Broker // nil with an external broker
	BrokerURL *url.URL
	Store     *state.Store
	// NATSURL and NATSCreds are what another replica sharing this one's
	// NATS gives as its Config.NATSURL and NATSCreds: the embedded
	// server's address and login file (or the external ones).
	NATSURL    string
	NATSCreds  string
	Controller *controller.Controller
	Registries map[string]*RunningRegistry
	Fleet      *simfleet.Fleet
	// APIURL is the API's base URL, http://host:port.
	APIURL string
	// APIToken is the token the API requires ("" with
	// Config.APIInsecureNoAuth); APITokenFile is the file it was read
	// from or made in ("" when Config.APIToken gave it), and
	// APITokenCreated says it was made by this start.
	APIToken        string
	APITokenFile    string
	APITokenCreated bool
	// ControllerPassword logs in to the embedded broker as user
	// "controller" with access to every topic; made anew on every start.
	ControllerPassword string

	http    *http.Server
	closers []func() error
}

// Start starts everything and returns once the API serves: the
// registries, the store, the gateways' identities, the broker that
// authenticates with them, the API's listener (its URL goes in the
// scheduler lease), the controller, and the simulated fleet.
func Start(ctx context.Context, cfg Config) (s *Server, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("serve: a data directory is required (--data)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("serve: data directory: %w", err)
	}
	s = &Server{Registries: map[string]*RunningRegistry{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.startRegistries(ctx, cfg); err != nil {
		return s, err
	}
	if err := s.openStore(ctx, cfg); err != nil {
		return s, err
	}
	s.closers = append(s.closers, func() error { s.Store.Close(); return nil })
	ctrlCfg, err := s.controllerConfig(ctx, cfg)
	if err != nil {
		return s, err
	}
	if err := s.startBroker(cfg, ctrlCfg.Identities); err != nil {
		return s, err
	}
	ctrlCfg.BrokerURL = s.BrokerURL
	if ctrlCfg.BrokerTLS, err = controllerTLS(cfg); err != nil {
		return s, err
	}
	if s.Broker != nil {
		ctrlCfg.Sessions = s.Broker
	}
	ln, err := s.listenAPI(cfg)
	if err != nil {
		return s, err
	}
	ctrlCfg.APIURL = s.APIURL
	if err := s.startController(ctx, cfg, ctrlCfg, ln); err != nil {
		return s, err
	}
	if cfg.Sim.Count > 0 {
		if s.Fleet, err = StartFleet(ctx, s.Controller, s.BrokerURL, cfg.DataDir, cfg.Scheme, cfg.Sim); err != nil {
			return s, err
		}
		s.closers = append(s.closers, s.Fleet.Close)
	}
	return s, nil
}

// openStore connects to the external NATS or starts the embedded one,
// which requires the login in DataDir/nats-login of every client.
func (s *Server) openStore(ctx context.Context, cfg Config) error {
	creds := cfg.NATSCreds
	if cfg.NATSURL == "" && creds == "" {
		creds = filepath.Join(cfg.DataDir, "nats-login")
	}
	st, err := state.Open(ctx, state.Config{URL: cfg.NATSURL, Dir: filepath.Join(cfg.DataDir, "nats"), Listen: cfg.NATSListen,
		Creds: creds, CA: cfg.NATSCA, Cert: cfg.NATSCert, Key: cfg.NATSKey, Replicas: cfg.NATSReplicas, Logger: cfg.Logger.With("component", "state")})
	if err != nil {
		return err
	}
	s.Store, s.NATSURL, s.NATSCreds = st, st.URL(), st.Creds()
	return nil
}

func (s *Server) startRegistries(ctx context.Context, cfg Config) error {
	if cfg.Registries == "" {
		return nil
	}
	regs, err := LoadRegistries(ctx, cfg.Registries, cfg.Logger)
	s.Registries = regs
	for _, r := range regs {
		s.closers = append(s.closers, r.Server.Close)
	}
	return err
}

// controllerConfig loads the keys and the identities, and chooses the
// controller's broker login: on the embedded broker a password made anew
// on every start (only this process uses it) unless one is given.
func (s *Server) controllerConfig(ctx context.Context, cfg Config) (controller.Config, error) {
	keyPath := cfg.SecretsKey
	if keyPath == "" {
		keyPath = filepath.Join(cfg.DataDir, "controller.key")
	}
	keys, err := credential.LoadKeys(keyPath, filepath.Join(cfg.DataDir, "controller-seal.key"))
	if err != nil {
		return controller.Config{}, fmt.Errorf("serve: %w", err)
	}
	allow := slices.Clone(cfg.RegistryCheckAllow)
	for _, r := range s.Registries {
		allow = append(allow, r.Server.Host)
	}
	check, err := egress.New("--registry-check-allow", allow)
	if err != nil {
		return controller.Config{}, fmt.Errorf("serve: %w", err)
	}
	ctrlCfg := controller.Config{Store: s.Store, Keys: keys, RegistryCheck: check, Scheme: cfg.Scheme, Encoding: codec.Protobuf, ID: cfg.ControllerID, Limits: cfg.GatewayLimits,
		StaleAfter: cfg.StaleAfter, Retention: cfg.Retention, Logger: cfg.Logger.With("component", "controller"),
		Username: cfg.BrokerUsername, IngestUsername: cfg.BrokerIngestUsername, Password: []byte(cfg.BrokerPassword), Share: cmp.Or(cfg.IngestGroup, DefaultIngestGroup)}
	if cfg.SoloIngest {
		ctrlCfg.Share = ""
	}
	idCfg := identity.Config{Store: s.Store, ControllerID: cfg.ControllerID}
	dyn, err := s.startDynsec(ctx, cfg)
	if err != nil {
		return controller.Config{}, err
	}
	if dyn != nil {
		idCfg.Mirror = dyn
	}
	if cfg.BrokerURL == "" {
		s.ControllerPassword = cfg.ControllerPassword
		if s.ControllerPassword == "" {
			s.ControllerPassword = identity.NewPassword()
		}
		idCfg.ControllerPassword = []byte(s.ControllerPassword)
		ctrlCfg.Username, ctrlCfg.Password = identity.ControllerUser, []byte(s.ControllerPassword)
	}
	if ctrlCfg.Identities, err = identity.New(ctx, idCfg); err != nil {
		return controller.Config{}, err
	}
	if dyn != nil {
		reconcileDynsec(ctx, cfg, dyn, ctrlCfg.Identities, s.Store)
	}
	return ctrlCfg, nil
}

// startBroker starts the embedded broker, which authenticates with ids,
// or takes the external one's URL.
func (s *Server) startBroker(cfg Config, ids *identity.Identities) error {
	if cfg.BrokerURL != "" {
		u, err := url.Parse(cfg.BrokerURL)
		if err != nil {
			return fmt.Errorf("serve: --broker %q: %w", cfg.BrokerURL, err)
		}
		s.BrokerURL = u
		return nil
	}
	if cfg.BrokerCA != "" || cfg.BrokerCert != "" {
		return errors.New("serve: --broker-ca and --broker-cert are for an external broker (--broker mqtts://…)")
	}
	listen := cfg.MQTTListen
	if listen == "" {
		listen = "127.0.0.1:1883"
	}
	bcfg := broker.Config{Addr: listen, StorePath: filepath.Join(cfg.DataDir, "broker.db"),
		Auth: ids, Scheme: cfg.Scheme, Limits: cfg.BrokerLimits, Logger: cfg.Logger.With("component", "broker")}
	if err := brokerTLS(cfg, &bcfg); err != nil {
		return err
	}
	b, err := broker.Start(bcfg)
	if err != nil {
		return err
	}
	s.Broker = b
	s.closers = append(s.closers, b.Close)
	s.BrokerURL, _ = url.Parse(b.URL())
	return nil
}

func (s *Server) listenAPI(cfg Config) (net.Listener, error) {
	listen := cfg.HTTPListen
	if listen == "" {
		listen = "127.0.0.1:8080"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("serve: API listen: %w", err)
	}
	s.APIURL = "http://" + ln.Addr().String()
	if s.APIToken, s.APITokenFile, s.APITokenCreated, err = apiToken(cfg, ln.Addr()); err != nil {
		ln.Close()
		return nil, err
	}
	switch {
	case cfg.APIInsecureNoAuth:
		cfg.Logger.Warn("THE API HAS NO AUTHENTICATION (--api-insecure-no-auth): any local process can control the fleet; for tests only", "listen", ln.Addr().String())
	case s.APITokenCreated:
		cfg.Logger.Info("API token created", "file", s.APITokenFile)
	}
	return ln, nil
}

// startController starts the controller and then serves its API on ln;
// ln is closed when the controller does not start.
func (s *Server) startController(ctx context.Context, cfg Config, ctrlCfg controller.Config, ln net.Listener) error {
	ctrl, err := controller.New(ctx, ctrlCfg)
	if err == nil {
		dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = ctrl.Start(dialCtx)
		cancel()
	}
	if err != nil {
		ln.Close() // not served yet
		return err
	}
	s.Controller = ctrl
	s.closers = append(s.closers, ctrl.Close)
	h, err := httpHandler(cfg, ctrl, s.APIToken, ln.Addr())
	if err != nil {
		ln.Close()
		return err
	}
	s.http = newHTTPServer(h)
	go func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("API stopped", "err", err)
		}
	}()
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.http.Shutdown(ctx)
	})
	return nil
}

// StartFleet provisions and starts a simulated fleet against ctrl's broker.
// Each gateway is provisioned with the groups and labels it announces, so
// that targeting by them reaches it.
func StartFleet(ctx context.Context, ctrl *controller.Controller, brokerURL *url.URL, dataDir string, scheme topic.Scheme, sim simfleet.Config) (*simfleet.Fleet, error) {
	if sim.Tenant == "" {
		sim.Tenant = "sim"
	}
	if sim.Prefix == "" {
		sim.Prefix = "sim-"
	}
	if sim.Labels == nil {
		sim.Labels = simfleet.DefaultLabels
	}
	sim.Password = []byte(identity.NewPassword())
	gws := make([]identity.Gateway, sim.Count)
	for i := range gws {
		gws[i] = identity.Gateway{ID: fmt.Sprintf("%s%d", sim.Prefix, i+1), Assignment: identity.Assignment{Groups: sim.Groups, Labels: sim.Labels(i + 1)}}
	}
	if err := ctrl.ProvisionMany(ctx, sim.Tenant, gws, string(sim.Password)); err != nil {
		return nil, fmt.Errorf("provision simulated gateways: %w", err)
	}
	if sim.CommandKeys == nil {
		keys, err := ctrl.CommandKeys(ctx, sim.Tenant)
		if err == nil {
			sim.CommandKeys, err = cmdsig.NewVerifier(keys)
		}
		if err != nil {
			return nil, fmt.Errorf("command-signing keys of simulated gateways: %w", err)
		}
	}
	sim.BrokerURL, sim.Scheme, sim.Encoding = brokerURL, scheme, codec.Protobuf
	if sim.StateDir == "" {
		sim.StateDir = filepath.Join(dataDir, "sim", sim.Tenant)
	}
	return simfleet.Start(ctx, sim)
}

// Close stops everything, in the reverse order of starting.
func (s *Server) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}

// RunningRegistry is one emulated registry of the registries file.
type RunningRegistry struct {
	Name   string
	Server *registry.Server
	// Images pushed, as references.
	Images []string
}
