// Package serve runs what `cloud-sim serve` runs: the MQTT broker
// (embedded, with per-gateway authentication and ACL, or an external one),
// the emulated registries of a registries file, the durable store (NATS
// JetStream, embedded or external), the fleet controller, its HTTP API,
// and optionally a simulated fleet.
package serve

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

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
	BrokerPassword string
	// NATSURL is an external NATS (cluster); else an embedded server
	// listens on NATSListen.
	NATSURL    string
	NATSListen string
	// HTTPListen is the API's address; APIToken, when set, is required.
	HTTPListen string
	APIToken   string
	// Registries is a registries file (see LoadRegistries); "" for none.
	Registries string
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
	// Sim, when Sim.Count > 0, runs a simulated fleet in the process,
	// provisioned on the embedded broker.
	Sim    simfleet.Config
	Logger *slog.Logger
}

// Server is a running cloud-sim.
type Server struct {
	Broker     *broker.Broker // nil with an external broker
	BrokerURL  *url.URL
	Store      *state.Store
	Controller *controller.Controller
	Registries map[string]*RunningRegistry
	Fleet      *simfleet.Fleet
	// APIURL is the API's base URL, http://host:port.
	APIURL string
	// ControllerPassword logs in to the embedded broker as user
	// "controller" with access to every topic; made anew on every start.
	ControllerPassword string

	http    *http.Server
	closers []func() error
}

// Start starts everything and returns once the API serves.
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
	log := cfg.Logger

	if cfg.Registries != "" {
		regs, err := LoadRegistries(ctx, cfg.Registries, log)
		s.Registries = regs
		for _, r := range regs {
			s.closers = append(s.closers, r.Server.Close)
		}
		if err != nil {
			return s, err
		}
	}

	if s.Store, err = state.Open(ctx, state.Config{URL: cfg.NATSURL, Dir: filepath.Join(cfg.DataDir, "nats"), Listen: cfg.NATSListen, Logger: log}); err != nil {
		return s, err
	}
	s.closers = append(s.closers, func() error { s.Store.Close(); return nil })

	keyPath := cfg.SecretsKey
	if keyPath == "" {
		keyPath = filepath.Join(cfg.DataDir, "controller.key")
	}
	keys, err := credential.LoadKeys(keyPath, filepath.Join(cfg.DataDir, "controller-seal.key"))
	if err != nil {
		return s, fmt.Errorf("serve: %w", err)
	}

	// The controller's password on the embedded broker is made anew on
	// every start: only this process uses it.
	ctrlPass := cfg.BrokerPassword
	if cfg.BrokerURL == "" && cfg.ControllerPassword != "" {
		ctrlPass = cfg.ControllerPassword
	} else if cfg.BrokerURL == "" {
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		ctrlPass = base64.RawURLEncoding.EncodeToString(b)
	}
	var ctrl *controller.Controller
	ctrlCfg := controller.Config{Store: s.Store, Keys: keys, Scheme: cfg.Scheme, Encoding: codec.Protobuf, ID: cfg.ControllerID,
		StaleAfter: cfg.StaleAfter, Retention: cfg.Retention, CertsDir: cfg.DataDir, Logger: log.With("component", "controller")}
	if cfg.BrokerURL == "" {
		s.ControllerPassword = ctrlPass
		ctrlCfg.ControllerPassword = []byte(ctrlPass)
		ctrlCfg.Username, ctrlCfg.Password = controller.ControllerUser, []byte(ctrlPass)
	} else {
		ctrlCfg.Username, ctrlCfg.Password = cfg.BrokerUsername, []byte(cfg.BrokerPassword)
	}
	if ctrl, err = controller.New(ctx, ctrlCfg); err != nil {
		return s, err
	}
	s.Controller = ctrl

	if cfg.BrokerURL == "" {
		listen := cfg.MQTTListen
		if listen == "" {
			listen = "127.0.0.1:1883"
		}
		b, err := broker.Start(broker.Config{Addr: listen, StorePath: filepath.Join(cfg.DataDir, "broker.db"),
			Auth: ctrl, Scheme: cfg.Scheme, Logger: log.With("component", "broker")})
		if err != nil {
			return s, err
		}
		s.Broker = b
		s.closers = append(s.closers, b.Close)
		s.BrokerURL, _ = url.Parse(b.URL())
	} else {
		if s.BrokerURL, err = url.Parse(cfg.BrokerURL); err != nil {
			return s, fmt.Errorf("serve: --broker %q: %w", cfg.BrokerURL, err)
		}
	}
	ctrl.SetBroker(s.BrokerURL)
	listen := cfg.HTTPListen
	if listen == "" {
		listen = "127.0.0.1:8080"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return s, fmt.Errorf("serve: API listen: %w", err)
	}
	s.APIURL = "http://" + ln.Addr().String()
	s.http = &http.Server{Handler: api.New(api.Config{Controller: ctrl, Token: cfg.APIToken, Logger: log.With("component", "api")}),
		ReadHeaderTimeout: 10 * time.Second}
	ctrl.SetAPIURL(s.APIURL)
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ctrl.Start(dialCtx); err != nil {
		ln.Close() // not served yet
		return s, err
	}
	s.closers = append(s.closers, ctrl.Close)

	go func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("API stopped", "err", err)
		}
	}()
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.http.Shutdown(ctx)
	})

	if cfg.Sim.Count > 0 {
		if s.Fleet, err = StartFleet(ctx, ctrl, s.BrokerURL, cfg.DataDir, cfg.Scheme, cfg.Sim); err != nil {
			return s, err
		}
		s.closers = append(s.closers, s.Fleet.Close)
	}
	return s, nil
}

// StartFleet provisions and starts a simulated fleet against ctrl's broker.
func StartFleet(ctx context.Context, ctrl *controller.Controller, brokerURL *url.URL, dataDir string, scheme topic.Scheme, sim simfleet.Config) (*simfleet.Fleet, error) {
	if sim.Tenant == "" {
		sim.Tenant = "sim"
	}
	if sim.Prefix == "" {
		sim.Prefix = "sim-"
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	sim.Password = []byte(base64.RawURLEncoding.EncodeToString(b))
	ids := make([]string, sim.Count)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%d", sim.Prefix, i+1)
	}
	if err := ctrl.ProvisionMany(ctx, sim.Tenant, ids, sim.Groups, string(sim.Password)); err != nil {
		return nil, fmt.Errorf("provision simulated gateways: %w", err)
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
