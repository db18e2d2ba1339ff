// Package controller is the fleet controller: the inventory of gateways
// built from their births, deaths and statuses; commands to one gateway, a
// list or a label selector, recorded with their outcomes; registry
// credentials per tenant, sealed to each gateway when sent; and the MQTT
// identities gateways connect with. Its state lives in NATS JetStream
// (package state), so a restarted controller loses nothing.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/console"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config configures a Controller.
type Config struct {
	Store *state.Store
	// Keys encrypts credentials at rest (its AES key; replicas sharing a
	// NATS cluster must share it).
	Keys *credential.Keys

	BrokerURL *url.URL
	// ID is the controller's MQTT client id and reply-topic level; stable,
	// because its session is persistent ("controller" when empty).
	ID       string
	Username string
	Password []byte
	Scheme   topic.Scheme
	Encoding codec.Encoding

	// StaleAfter is how long an online gateway may stay silent before it
	// is shown as stale (2 minutes, four metrics intervals, when zero).
	StaleAfter time.Duration
	// FlushInterval is how often inventory changes are written to the
	// store (2 s when zero: the broker retains what they come from);
	// command outcomes are written every 250 ms, credentials at once.
	FlushInterval time.Duration
	// ControllerPassword, when set, lets a client log in to an embedded
	// broker as the controller with username ControllerUser.
	ControllerPassword []byte
	// APIURL is this replica's API, named in the scheduler lease so that
	// followers can point at the leader.
	APIURL string
	// Retention is how long finished commands and rollouts are kept
	// (DefaultRetention when zero); older ones are forgotten hourly.
	Retention time.Duration
	// CertsDir holds the registry certificates of cloud-side checks (a
	// temporary directory when empty).
	CertsDir string

	Logger *slog.Logger
	Now    func() time.Time
}

// ControllerUser is the MQTT username of the controller on the embedded broker.
const ControllerUser = "controller"

// Controller is a running fleet controller.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	store *state.Store
	con   *console.Console
	hub   hub

	mu       sync.Mutex
	gateways map[string]*Gateway // by state.Key(tenant, id)
	dirty    map[string]struct{}
	ingested uint64
	devices  map[string]*Device // by username "tenant/id"
	commands map[string]*commandRecord
	// dirtyCmds are commands changed since the last flush.
	dirtyCmds map[string]struct{}
	batches   map[string]*Batch
	creds     map[string]*Credential // by state.Key(tenant, scope)
	rollouts  map[string]*rolloutRun
	// lastSpecs is the last spec deployed to each gateway's deployment
	// (by specKey), what a rollback deploys again.
	lastSpecs  map[string]json.RawMessage
	dirtySpecs map[string]struct{}
	stopWork   func()
	leader     atomic.Bool // holds the rollout scheduler lease

	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once
}

// New loads the controller's state from the store. Call Start to connect.
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.Keys == nil {
		return nil, errors.New("controller: Store and Keys are required")
	}
	if cfg.ID == "" {
		cfg.ID = "controller"
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 2 * time.Minute
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Controller{cfg: cfg, log: cfg.Logger, store: cfg.Store,
		gateways: map[string]*Gateway{}, dirty: map[string]struct{}{}, devices: map[string]*Device{},
		commands: map[string]*commandRecord{}, dirtyCmds: map[string]struct{}{},
		rollouts: map[string]*rolloutRun{}, lastSpecs: map[string]json.RawMessage{}, dirtySpecs: map[string]struct{}{}, batches: map[string]*Batch{}, creds: map[string]*Credential{},
		stop: make(chan struct{})}
	load := func(b state.Bucket, fn func(key string, raw []byte) error) error {
		if err := cfg.Store.Each(ctx, b, fn); err != nil {
			return fmt.Errorf("controller: load %s: %w", b, err)
		}
		return nil
	}
	err := errors.Join(
		load(state.Gateways, func(k string, raw []byte) error { return decodeInto(raw, k, c.gateways) }),
		load(state.Devices, func(_ string, raw []byte) error {
			var d Device
			if err := json.Unmarshal(raw, &d); err != nil {
				return err
			}
			c.devices[d.Tenant+"/"+d.ID] = &d
			return nil
		}),
		load(state.Commands, func(_ string, raw []byte) error { return c.loadCommand(raw) }),
		load(state.Credentials, func(k string, raw []byte) error { return decodeInto(raw, k, c.creds) }),
	)
	if err == nil {
		c.rollouts, c.lastSpecs, err = c.readRollouts(ctx)
	}
	if err != nil {
		return nil, err
	}
	c.log.Info("controller state loaded", "gateways", len(c.gateways), "devices", len(c.devices), "commands", len(c.commands), "credentials", len(c.creds))
	return c, nil
}

func decodeInto[T any](raw []byte, key string, m map[string]*T) error {
	v := new(T)
	if err := json.Unmarshal(raw, v); err != nil {
		return err
	}
	m[key] = v
	return nil
}

// SetBroker sets the broker to connect to, before Start: an embedded
// broker authenticates clients with the controller, so it starts after it.
func (c *Controller) SetBroker(u *url.URL) { c.cfg.BrokerURL = u }

// SetAPIURL names this replica's API in the scheduler lease, before Start.
func (c *Controller) SetAPIURL(u string) { c.cfg.APIURL = u }

// Start connects to the broker with a persistent session, so that replies
// and births published while the controller was down reach it, and starts
// the background work. ctx bounds the connection attempt.
func (c *Controller) Start(ctx context.Context) error {
	con, err := console.Dial(ctx, console.Config{
		BrokerURL: c.cfg.BrokerURL, ID: c.cfg.ID, Username: c.cfg.Username, Password: c.cfg.Password,
		Scheme: c.cfg.Scheme, Encoding: c.cfg.Encoding, Watch: c.Ingest, SessionExpiry: 7 * 24 * time.Hour, LatestOnly: true, Logger: c.log,
	})
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	c.con = con
	go c.resendUnfinished(context.WithoutCancel(ctx))
	if held, err := c.store.Acquire(ctx, "rollout-scheduler", c.cfg.ID, c.cfg.APIURL, c.cfg.Now(), leaseTTL); err == nil && held {
		c.leader.Store(true) // the rollouts New loaded are current
	}
	if c.stopWork, err = c.store.Consume(ctx, 64, c.work); err != nil {
		con.Close()
		return fmt.Errorf("controller: %w", err)
	}
	c.done.Add(3)
	go c.flushLoop()
	go c.tokenLoop()
	go c.rolloutLoop()
	return nil
}

// Close stops the background work, writes pending inventory changes and
// disconnects.
func (c *Controller) Close() error {
	first := false
	c.closeOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	close(c.stop)
	c.done.Wait()
	if c.stopWork != nil {
		c.stopWork()
	}
	var err error
	if c.con != nil {
		err = c.con.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(err, c.flush(ctx))
}

// Ingested is how many gateway publications the controller has applied.
func (c *Controller) Ingested() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ingested
}

func (c *Controller) flushLoop() {
	defer c.done.Done()
	cmds := time.NewTicker(250 * time.Millisecond)
	defer cmds.Stop()
	inv := time.NewTicker(c.cfg.FlushInterval)
	defer inv.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		withInventory := false
		select {
		case <-c.stop:
			return
		case <-cmds.C:
		case <-inv.C:
			withInventory = true
		case <-prune.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			if _, err := c.prune(ctx, c.cfg.Now()); err != nil {
				c.log.Warn("old records not pruned; will retry", "err", err)
			}
			cancel()
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := c.flushSome(ctx, withInventory); err != nil {
			c.log.Error("state not saved; will retry", "err", err)
		}
		cancel()
	}
}

// flush writes the gateways and commands changed since the last flush.
// Births, deaths and statuses are retained at the broker, so what a crash
// loses of them between two flushes comes back when the controller
// resubscribes; a reply lost that way comes back when the controller sends
// the unfinished command again on start (resendUnfinished).
func (c *Controller) flush(ctx context.Context) error { return c.flushSome(ctx, true) }

func (c *Controller) flushSome(ctx context.Context, withInventory bool) error {
	c.mu.Lock()
	if (len(c.dirty) == 0 || !withInventory) && len(c.dirtyCmds) == 0 {
		c.mu.Unlock()
		return nil
	}
	gws := make(map[string]any, len(c.dirty))
	if withInventory {
		for k := range c.dirty {
			if g := c.gateways[k]; g != nil {
				gws[k] = g.clone()
			}
		}
		c.dirty = map[string]struct{}{}
	}
	cmds := make(map[string]any, len(c.dirtyCmds))
	ids := make([]string, 0, len(c.dirtyCmds))
	for id := range c.dirtyCmds {
		if rec := c.commands[id]; rec != nil {
			cp := *rec
			cmds[state.Key("cmd", id)] = &cp
			ids = append(ids, id)
		}
	}
	gwKeys := make([]string, 0, len(gws))
	for k := range gws {
		gwKeys = append(gwKeys, k)
	}
	c.dirtyCmds = map[string]struct{}{}
	c.mu.Unlock()
	err := errors.Join(c.store.PutMany(ctx, state.Gateways, gws), c.store.PutMany(ctx, state.Commands, cmds), c.flushRollouts(ctx))
	if err != nil {
		c.mu.Lock()
		for _, k := range gwKeys {
			c.dirty[k] = struct{}{}
		}
		for _, id := range ids {
			c.dirtyCmds[id] = struct{}{}
		}
		c.mu.Unlock()
	}
	return err
}
