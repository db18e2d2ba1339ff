// Package controller wires the fleet controller's parts together: the
// inventory (package inventory), commands and their outcomes (dispatch),
// rollouts (rollout), the tenants' registry credentials (tenantcred) and
// the gateways' MQTT identities (identity). It connects them to the broker
// and runs their background work; the parts keep their state in NATS
// JetStream (package state), so a restarted controller loses nothing.
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/cmdkeys"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/egress"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config configures a Controller.
type Config struct {
	Store *state.Store
	// Keys encrypts credentials and command payloads at rest (replicas
	// sharing a NATS cluster must share it).
	Keys *credential.Keys
	// Identities are the gateways' MQTT identities; the embedded broker
	// authenticates with them (a new set from Store when nil).
	Identities *identity.Identities
	// Sessions, when set, is the embedded broker, whose live sessions
	// deprovisioning and a new password end at once; an external broker
	// keeps its own identities.
	Sessions Sessions

	BrokerURL *url.URL
	// BrokerTLS configures an mqtts:// BrokerURL (system roots when nil).
	BrokerTLS *tls.Config
	// Share, when set, is the group of controller replicas that share
	// what gateways publish (an MQTT v5 shared subscription
	// $share/{Share}/…): the broker hands each publication to one
	// replica, which applies it to the inventory in the store; every
	// replica watches the store (replicas.go). Empty: this replica
	// receives everything, alone.
	Share string
	// Limits bound what one gateway may make the inventory hold.
	Limits inventory.Limits
	// ID is the controller's MQTT client id and reply-topic level; stable,
	// because its session is persistent ("controller" when empty).
	ID       string
	Username string
	// IngestUsername logs the shared-ingest session in (Username when
	// empty; see mqttclient.Config.IngestUsername).
	IngestUsername string
	Password       []byte
	Scheme         topic.Scheme
	Encoding       codec.Encoding

	// StaleAfter is how long an online gateway may stay silent before it
	// is shown as stale (2 minutes, four metrics intervals, when zero).
	StaleAfter time.Duration
	// FlushInterval is how often inventory changes are written to the
	// store (2 s when zero, 1 s with Share: the other replicas read them
	// from there; the broker retains what they come from); command
	// outcomes are written every 250 ms, credentials at once.
	FlushInterval time.Duration
	// APIURL is this replica's API, named in the scheduler lease so that
	// followers can point at the leader.
	APIURL string
	// Retention is how long finished commands and rollouts are kept
	// (DefaultRetention when zero); older ones are forgotten hourly.
	Retention time.Duration
	// RegistryCheck is where the cloud's registry check may connect
	// (public addresses only when nil); see tenantcred.Config.
	RegistryCheck *egress.Policy

	Logger *slog.Logger
	Now    func() time.Time
}

// Controller is a running fleet controller. Each part has its own lock;
// the Controller itself holds none.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	store *state.Store
	hub   *changes.Hub
	con   *mqttclient.Console

	inv   *inventory.Inventory
	ids   *identity.Identities
	disp  *dispatch.Dispatcher
	sched *rollout.Scheduler
	creds *tenantcred.Credentials
	sign  *cmdkeys.Keys
	// resolver checks rollout work items against the store.
	resolver *rollout.Resolver
	// peers are the replies to rollout commands other replicas sent.
	peers *peerOutcomes
	// logs are the logs streams this replica serves (logstreams.go).
	logs *logStreams
	// replicas: the other replicas' liveness and the resyncs
	// (replicas.go); stopWatch ends the dispatcher's watch (Share only).
	replicas  replicaSet
	stopWatch func()
	stopIDs   func()
	stopRelay func()
	// localIDs are the identities this replica is changing (see
	// changingIdentity); "tenant/id" keys.
	localIDs sync.Map
	worked   atomic.Uint64 // rollout work items sent
	received atomic.Uint64 // live gateway publications received (not replies)

	stopWork  func()
	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once
}

// New loads the controller's state from the store. Call Start to connect.
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.Keys == nil {
		return nil, errors.New("controller: Store and Keys are required")
	}
	cfg = withDefaults(cfg)
	c := &Controller{cfg: cfg, log: cfg.Logger, store: cfg.Store, hub: new(changes.Hub), stop: make(chan struct{}),
		resolver: rollout.NewResolver(cfg.Store), peers: new(peerOutcomes)}
	c.logs = newLogStreams(controllerLogsLink{c}, func(tenant, id string) bool {
		g, ok := c.inv.Get(tenant, id)
		return ok && g.Online
	}, c.log, cfg.Now)
	var err error
	if c.ids = cfg.Identities; c.ids == nil {
		if c.ids, err = identity.New(ctx, identity.Config{Store: cfg.Store, ControllerID: cfg.ID, Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	if cfg.Share != "" {
		if err := c.relayChanges(); err != nil {
			return nil, err
		}
		// Provisioning on another replica reaches this one's broker and
		// selectors at once.
		if c.stopIDs, err = c.ids.Watch(context.WithoutCancel(ctx), c.identityChanged); err != nil {
			return nil, err
		}
	}
	c.inv = inventory.New(inventory.Config{StaleAfter: cfg.StaleAfter, Changes: c.hub, Assigned: c.ids, Limits: cfg.Limits,
		Replicated: cfg.Share != "", Logger: c.log, Now: cfg.Now})
	if err := c.inv.Load(ctx, cfg.Store); err != nil {
		return nil, err
	}
	if c.disp, err = dispatch.New(dispatch.Config{Store: cfg.Store, Cipher: cfg.Keys, Changes: c.hub, Late: c.replied, Logger: c.log, Now: cfg.Now}); err != nil {
		c.inv.Close()
		return nil, err
	}
	if cfg.Share != "" {
		c.stopWatch, err = c.disp.Watch(context.WithoutCancel(ctx))
	} else {
		err = c.disp.Load(ctx)
	}
	if err != nil {
		c.inv.Close()
		return nil, err
	}
	if c.creds, err = tenantcred.New(ctx, tenantcred.Config{Store: cfg.Store, Keys: cfg.Keys, Changes: c.hub,
		RegistryCheck: cfg.RegistryCheck, Logger: c.log, Now: cfg.Now}); err != nil {
		return nil, err
	}
	if c.sign, err = cmdkeys.New(cmdkeys.Config{Store: cfg.Store, Cipher: cfg.Keys, Now: cfg.Now}); err != nil {
		return nil, err
	}
	c.sched, err = rollout.New(ctx, rollout.Config{Store: cfg.Store, ID: cfg.ID, APIURL: cfg.APIURL, Fleet: c.inv, Commands: rolloutCommands{disp: c.disp, peers: c.peers},
		Changes: c.hub, OnLead: c.onLead, Logger: c.log, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	c.log.Info("controller state loaded", "gateways", c.inv.Len(), "devices", c.ids.Len(), "commands", c.disp.Len(), "credentials", c.creds.Len())
	return c, nil
}

func withDefaults(cfg Config) Config {
	if cfg.ID == "" {
		cfg.ID = "controller"
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 2 * time.Second
		if cfg.Share != "" {
			cfg.FlushInterval = time.Second
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg
}

// Start connects to the broker with a persistent session, so that replies
// and births published while the controller was down reach it, and starts
// the background work. ctx bounds the connection attempt.
func (c *Controller) Start(ctx context.Context) error {
	if c.cfg.BrokerURL == nil {
		return errors.New("controller: BrokerURL is required")
	}
	con, err := mqttclient.Dial(ctx, mqttclient.Config{
		BrokerURL: c.cfg.BrokerURL, TLS: c.cfg.BrokerTLS, ID: c.cfg.ID, Username: c.cfg.Username, Password: c.cfg.Password,
		Scheme: c.cfg.Scheme, Encoding: c.cfg.Encoding, Watch: c.Ingest, SessionExpiry: 7 * 24 * time.Hour, LatestOnly: true, Signer: c.sign,
		Share: c.cfg.Share, IngestUsername: c.cfg.IngestUsername, Logger: c.log,
	})
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	c.disp.Start(con)
	if c.stopWork, err = c.store.Consume(ctx, 64, c.work); err != nil {
		c.disp.Close()
		con.Close()
		return fmt.Errorf("controller: %w", err)
	}
	c.con = con // started: Close stops the parts
	c.sched.Start(ctx)
	c.done.Add(3)
	go c.flushLoop()
	go c.tokenLoop()
	go c.replicaLoop()
	return nil
}

// Close stops the background work, writes pending changes and
// disconnects.
func (c *Controller) Close() error {
	first := false
	c.closeOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	close(c.stop)
	c.done.Wait()
	var err error
	if c.con != nil {
		c.sched.Close()
		c.replicas.wg.Wait()
		c.stopWork()
		c.disp.Close()
		err = c.con.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = errors.Join(err, c.flush(ctx, true))
	if c.con != nil {
		c.sched.Release(ctx) // after the last write: another replica schedules at once
		c.leave(ctx)         // after the last write: nothing of its share is lost
	}
	if c.stopWatch != nil {
		c.stopWatch()
	}
	if c.stopIDs != nil {
		c.stopIDs()
	}
	if c.stopRelay != nil {
		c.stopRelay()
	}
	c.inv.Close()
	return err
}

// Ingest applies one publication from a gateway to the inventory or, for
// a reply, to its command (and a logs stream of this replica's), and hands
// a logs chunk to its stream. The controller calls it for everything it
// receives; benchmarks and tests call it directly.
func (c *Controller) Ingest(r mqttclient.Received) {
	t := r.Topic
	if t.Kind == topic.Reply {
		if rep, ok := r.Message.(*fleetv1.Reply); ok {
			c.logs.reply(t.Tenant, t.Gateway, rep)
			c.reply(t.Tenant, t.Gateway, rep, r.At)
		}
		return
	}
	if t.Kind == topic.LogStream {
		if ch, ok := r.Message.(*fleetv1.LogChunk); ok {
			c.logs.chunk(t, ch)
		}
		return
	}
	if !r.Retained {
		c.received.Add(1)
	}
	if r.Err != nil {
		c.log.Debug("undecodable publication", "topic", r.Name, "err", r.Err)
		return
	}
	c.inv.Apply(r)
}

// Received is how many live (not retained) gateway publications other
// than replies this replica received: with replicas sharing ingest, its
// share of them.
func (c *Controller) Received() uint64 { return c.received.Load() }

// reply applies a gateway's reply to its command; a set-credentials that
// succeeded updates what the inventory says the gateway holds.
func (c *Controller) reply(tenant, gw string, rep *fleetv1.Reply, at time.Time) {
	cmd, matched := c.disp.Reply(tenant, gw, rep, at)
	if !matched {
		c.peers.note(tenant, gw, rep)
		return
	}
	c.inv.Touch(tenant, gw, at)
	c.replied(cmd)
}

// replied records what a command's reply changed of its gateway: a
// set-credentials that succeeded, what the gateway now holds.
func (c *Controller) replied(cmd dispatch.Command) {
	if cmd.State == dispatch.Succeeded && cmd.Verb == string(topic.SetCredentials) {
		c.inv.NoteCredentials(cmd.Tenant, cmd.Gateway, cmd.Credentials)
	}
}

// Ingested is how many gateway publications the controller has applied.
func (c *Controller) Ingested() uint64 { return c.inv.Ingested() }

// Subscribe returns a subscription to fleet changes with room for buffer
// changes.
func (c *Controller) Subscribe(buffer int) *changes.Subscription { return c.hub.Subscribe(buffer) }

// SubscribeAfter is Subscribe resumed at cursor: changes.Hub.SubscribeAfter.
func (c *Controller) SubscribeAfter(cursor string, buffer int) (*changes.Subscription, []changes.Change, bool) {
	return c.hub.SubscribeAfter(cursor, buffer)
}

// Changes lists the latest changes f selects, newest first, at most limit
// (the hub keeps changes.History of them, in memory only), and the cursor
// from which a stream of what comes next resumes.
func (c *Controller) Changes(f changes.Filter, limit int) ([]changes.Change, string) {
	return c.hub.List(f, limit)
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
		if err := c.flush(ctx, withInventory); err != nil {
			c.log.Error("state not saved; will retry", "err", err)
		}
		cancel()
	}
}

// flush writes the commands and rollouts changed since the last flush,
// and the inventory's changes too when withInventory. Births, deaths and
// statuses are retained at the broker, so what a crash loses of them
// between two flushes comes back when the controller resubscribes; a
// reply lost that way comes back when the dispatcher sends the unfinished
// command again on start.
func (c *Controller) flush(ctx context.Context, withInventory bool) error {
	var errInv error
	if withInventory {
		errInv = c.inv.Flush(ctx, c.store)
	}
	return errors.Join(errInv, c.disp.Flush(ctx), c.sched.Flush(ctx))
}
