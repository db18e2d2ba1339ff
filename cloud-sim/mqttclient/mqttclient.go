// Package mqttclient is the cloud's MQTT client: it sends commands to
// gateways and awaits their replies, and hands everything gateways publish
// (births, deaths, replies, statuses, events, metrics) to its watchers.
package mqttclient

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config configures a Console.
type Config struct {
	BrokerURL *url.URL
	// TLS configures mqtts:// (tls://, ssl://) connections: the CA that
	// signs the broker's certificate and a client certificate (system
	// roots and none when nil).
	TLS *tls.Config
	// ID names this console; it is the MQTT client id and the last level of
	// its reply topics. Random when empty.
	ID       string
	Username string
	Password []byte
	Scheme   topic.Scheme
	// Encoding of the commands Send publishes.
	Encoding codec.Encoding
	// Watch, if set, is a watcher installed before subscribing, so that it
	// also sees the retained messages the broker sends on subscribe.
	Watch func(Received)
	// SessionExpiry, when set, makes the session persistent (no clean
	// start): replies and births published while the console is down are
	// delivered when it reconnects. The ID must then be stable.
	SessionExpiry time.Duration
	// LatestOnly subscribes to births, deaths, statuses and metrics at QoS 0:
	// the broker retains the latest certificate and status and sends them
	// again on every (re)subscribe, so a persistent session need not queue
	// and persist each one. Replies and events stay QoS 1.
	LatestOnly bool
	// Share, when set, makes this console one of the group of consoles
	// (controller replicas) that share what gateways publish: it
	// subscribes through MQTT v5 shared subscriptions ($share/{Share}/…),
	// so the broker hands each publication to one of them, on a second
	// session that ends with its connection; only replies on this
	// console's own reply topics come to it alone. The broker sends no
	// retained messages to a shared subscription: Resync asks for them.
	Share string
	// IngestUsername logs the ingest session in (Username when empty):
	// a broker that makes each username its client id (Mosquitto's
	// use_username_as_clientid) needs a user of its own for it.
	IngestUsername string
	// Signer, when set, signs every command published (protocol/cmdsig):
	// gateways with command-signing keys run no other.
	Signer Signer
	Logger *slog.Logger
}

// Signer signs a command of tenant published on topic with contentType
// and payload, returning the values of the user properties
// cmdsig.PropKeyID and cmdsig.PropSignature.
type Signer interface {
	Sign(ctx context.Context, tenant, topic, contentType string, payload []byte) (keyID, signature string, err error)
}

// Received is one publication from a gateway.
type Received struct {
	Topic           topic.Topic
	Name            string // the raw topic
	Payload         []byte
	ContentType     string
	CorrelationData []byte
	Retained        bool
	// Message is the decoded payload: *fleetv1.Birth, Death, Reply, Event,
	// Metrics, DeploymentStatus or LogChunk; nil with Err set when it does not decode,
	// nil without Err for an empty (clearing) retained payload.
	Message proto.Message
	Err     error
	At      time.Time
}

// Console is a connected cloud client.
type Console struct {
	cfg Config
	log *slog.Logger
	cm  *autopaho.ConnectionManager
	// ingest is the session of the shared subscriptions (Share only).
	ingest *autopaho.ConnectionManager
	// retained counts the retained messages received, for Resync.
	retained atomic.Uint64
	// resyncing is set while a Resync's subscriptions may be in place on
	// the own session: from its SUBSCRIBE until the broker took its
	// UNSUBSCRIBE.
	resyncing atomic.Bool

	mu       sync.Mutex
	waiters  map[string]chan *fleetv1.Reply
	watchers map[int]func(Received)
	nextW    int
	// watching is the watchers, a copy made when they change: every
	// publication is handed to them.
	watching atomic.Pointer[[]func(Received)]
}

// Dial connects and subscribes to everything gateways publish under the
// scheme (with Share, to this console's share of it). It returns once the
// subscriptions are in place; ctx bounds that wait, not the connections,
// which live until Close.
func Dial(ctx context.Context, cfg Config) (*Console, error) {
	if cfg.BrokerURL == nil {
		return nil, errors.New("mqttclient: BrokerURL is required")
	}
	if cfg.ID == "" {
		cfg.ID = "console-" + randomHex(6)
	}
	if err := topic.CheckID("console id", cfg.ID); err != nil {
		return nil, err
	}
	if cfg.Share != "" {
		if err := topic.CheckID("share group", cfg.Share); err != nil {
			return nil, err
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Console{cfg: cfg, log: cfg.Logger, waiters: map[string]chan *fleetv1.Reply{}, watchers: map[int]func(Received){}}
	if cfg.Watch != nil {
		c.Watch(cfg.Watch)
	}
	own, shared := c.subscriptions()
	cm, err := c.connect(ctx, cfg.ID, cfg.SessionExpiry, own)
	if err != nil {
		return nil, err
	}
	c.cm = cm
	if len(shared) > 0 {
		// Its own session, which ends with the connection: the broker
		// hands a dead replica's share to the others at once.
		if c.ingest, err = c.connect(ctx, cfg.ID+"-ingest", 0, shared); err != nil {
			cm.Disconnect(context.Background())
			return nil, err
		}
	}
	return c, nil
}

// subscriptions are the console's subscriptions: without Share, one
// session's to everything; with it, the own session's to this console's
// reply topics and the ingest session's shares of the rest (replies
// without a console level included).
func (c *Console) subscriptions() (own, shared []paho.SubscribeOptions) {
	cfg := c.cfg
	qosOf := func(k topic.Kind) byte {
		if cfg.LatestOnly && k != topic.Reply && k != topic.Events {
			return 0
		}
		return 1
	}
	kinds := []topic.Kind{topic.Birth, topic.Death, topic.Reply, topic.Status, topic.Events, topic.Metrics}
	if cfg.Share == "" {
		for _, k := range kinds {
			own = append(own, paho.SubscribeOptions{Topic: cfg.Scheme.Filter(k), QoS: qosOf(k)})
		}
		return own, nil
	}
	own = append(own, paho.SubscribeOptions{Topic: cfg.Scheme.ConsoleReply("+", "+", cfg.ID), QoS: 1})
	for _, k := range kinds {
		f := cfg.Scheme.Filter(k)
		if k == topic.Reply {
			f = cfg.Scheme.Reply("+", "+")
		}
		shared = append(shared, paho.SubscribeOptions{Topic: "$share/" + cfg.Share + "/" + f, QoS: qosOf(k)})
	}
	return own, shared
}

// connect opens one session with client id, persistent for expiry (clean
// when 0), and subscribes subs on every connection; it returns once the
// first subscription is in place or ctx ends.
func (c *Console) connect(ctx context.Context, id string, expiry time.Duration, subs []paho.SubscribeOptions) (*autopaho.ConnectionManager, error) {
	cfg := c.cfg
	subscribed := make(chan error, 1)
	var once sync.Once
	var conns atomic.Uint64 // connections made: a subscriber of an older one stops
	u := *cfg.BrokerURL
	if u.Scheme == "tcp" {
		u.Scheme = "mqtt"
	}
	// ctx bounds the dial only; the connection lives until Close.
	username := cfg.Username
	if id != cfg.ID && cfg.IngestUsername != "" {
		username = cfg.IngestUsername
	}
	cm, err := autopaho.NewConnection(context.WithoutCancel(ctx), autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: expiry == 0,
		SessionExpiryInterval:         uint32(expiry / time.Second),
		ReconnectBackoff:              backoff.Policy{Base: 200 * time.Millisecond, Max: 5 * time.Second}.Delay,
		AttemptConnection:             dialer(u.Scheme),
		TlsCfg:                        cfg.TLS,
		ConnectUsername:               username,
		ConnectPassword:               cfg.Password,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			n := conns.Add(1)
			go c.keepSubscribed(cm, id, subs, func() bool { return conns.Load() != n }, func(err error) {
				once.Do(func() { subscribed <- err })
			})
		},
		OnConnectError: func(err error) { c.log.Warn("mqttclient: connect", "client", id, "err", err) },
		ClientConfig: paho.ClientConfig{
			ClientID: id,
			// Why a connection ended: the client's own error (a read, a
			// write, a keepalive timeout) or the broker's DISCONNECT.
			OnClientError: func(err error) { c.log.Warn("mqttclient: connection lost", "client", id, "err", err) },
			OnServerDisconnect: func(d *paho.Disconnect) {
				c.log.Warn("mqttclient: the broker ended the connection", "client", id, "reason", d.ReasonCode, "message", disconnectReason(d))
			},
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				if c.duplicate(id, pr.Packet) {
					return true, nil
				}
				c.receive(pr.Packet)
				return true, nil
			}},
		},
	})
	if err != nil {
		return nil, err
	}
	select {
	case err := <-subscribed:
		if err != nil {
			cm.Disconnect(context.Background())
			return nil, fmt.Errorf("mqttclient: subscribe: %w", err)
		}
	case <-ctx.Done():
		cm.Disconnect(context.Background())
		return nil, fmt.Errorf("mqttclient: connect to %s: %w", cfg.BrokerURL.Redacted(), ctx.Err())
	}
	return cm, nil
}

// refused names the subscriptions a SUBACK refused, with the broker's
// reason code for each.
func refused(subs []paho.SubscribeOptions, sa *paho.Suback) string {
	if sa == nil {
		return ""
	}
	var out []string
	for i, code := range sa.Reasons {
		if code >= 0x80 && i < len(subs) {
			out = append(out, fmt.Sprintf("%s: 0x%02x", subs[i].Topic, code))
		}
	}
	return strings.Join(out, ", ")
}

// subscribeTimeout bounds one SUBSCRIBE's wait for its SUBACK.
const subscribeTimeout = 10 * time.Second

// resubscribe paces the tries of a connection's subscriptions after a
// SUBACK that refused one or did not come in time.
var resubscribe = backoff.Policy{Base: 500 * time.Millisecond, Max: 30 * time.Second}

// keepSubscribed subscribes a new connection of session id to subs, and
// tries again until the broker takes them, the connection is replaced
// (stale) or the console closes: a clean session (the ingest's) whose
// SUBSCRIBE timed out under load would otherwise get nothing on that
// connection, and a persistent one would miss subscriptions it never had.
// The first outcome goes to first: Dial fails at once when the broker
// refuses a subscription. The console's own session, with Share, then
// drops what a Resync cut short may have left subscribed.
func (c *Console) keepSubscribed(cm *autopaho.ConnectionManager, id string, subs []paho.SubscribeOptions, stale func() bool, first func(error)) {
	for try := 1; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
		sa, err := subscribeRetry(ctx, cm, subs)
		cancel()
		if err == nil {
			first(nil)
			if try > 1 {
				c.log.Info("mqttclient: subscribed", "client", id, "tries", try)
			}
			if id == c.cfg.ID && c.cfg.Share != "" {
				c.dropResyncLeftovers(cm)
			}
			return
		}
		c.log.Warn("mqttclient: subscribe; trying again", "client", id, "err", err, "refused", refused(subs, sa), "try", try)
		if sa != nil {
			first(err)
		}
		select {
		case <-cm.Done():
			return
		case <-time.After(resubscribe.Delay(try)):
		}
		if stale() {
			return
		}
	}
}

// dropResyncLeftovers unsubscribes the own session from what Resync
// subscribes, unless a Resync is running: a console that stopped during
// one (a replica killed) left its persistent session subscribed, and every
// live birth, death and status would come to it twice from then on.
func (c *Console) dropResyncLeftovers(cm *autopaho.ConnectionManager) {
	if c.resyncing.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
	defer cancel()
	if err := unsubscribeRetry(ctx, cm, c.resyncFilters()); err != nil {
		c.log.Warn("mqttclient: drop what an earlier resync subscribed", "err", err)
	}
}

// resyncFilters are the filters Resync subscribes to.
func (c *Console) resyncFilters() []string {
	return []string{c.cfg.Scheme.Filter(topic.Birth), c.cfg.Scheme.Filter(topic.Death), c.cfg.Scheme.Filter(topic.Status)}
}

// disconnectReason is a DISCONNECT's reason string, "" when it has none.
func disconnectReason(d *paho.Disconnect) string {
	if d.Properties == nil {
		return ""
	}
	return d.Properties.ReasonString
}

// duplicate reports whether p, received by session id, is a live
// publication a Resync's subscription brought to the console's own
// session: the ingest session's share has it, or another replica's.
func (c *Console) duplicate(id string, p *paho.Publish) bool {
	if c.cfg.Share == "" || id != c.cfg.ID || p.Retain {
		return false
	}
	t, err := c.cfg.Scheme.Parse(p.Topic)
	return err == nil && t.Kind != topic.Reply && t.Kind != topic.LogStream
}

// ID is the console's id.
func (c *Console) ID() string { return c.cfg.ID }

// Close disconnects.
func (c *Console) Close() error {
	var err error
	if c.ingest != nil {
		err = c.ingest.Disconnect(context.Background())
	}
	return errors.Join(err, c.cm.Disconnect(context.Background()))
}

// Watch calls fn for every publication received from now on, one at a
// time, until the returned cancel is called. fn must not block.
func (c *Console) Watch(fn func(Received)) (cancel func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextW
	c.nextW++
	c.watchers[id] = fn
	c.snapshotWatchers()
	return func() {
		c.mu.Lock()
		delete(c.watchers, id)
		c.snapshotWatchers()
		c.mu.Unlock()
	}
}

// snapshotWatchers copies the watchers for receive. c.mu is held.
func (c *Console) snapshotWatchers() {
	ws := make([]func(Received), 0, len(c.watchers))
	for _, w := range c.watchers {
		ws = append(ws, w)
	}
	c.watching.Store(&ws)
}

func (c *Console) receive(p *paho.Publish) {
	r := Received{Name: p.Topic, Payload: p.Payload, Retained: p.Retain, At: time.Now()}
	if p.Retain {
		c.retained.Add(1)
	}
	if p.Properties != nil {
		r.ContentType, r.CorrelationData = p.Properties.ContentType, p.Properties.CorrelationData
	}
	t, err := c.cfg.Scheme.Parse(p.Topic)
	if err != nil {
		c.log.Debug("ignoring publication on unknown topic", "topic", p.Topic)
		return
	}
	r.Topic = t
	if len(p.Payload) > 0 {
		var m proto.Message
		switch t.Kind {
		case topic.Birth:
			m = new(fleetv1.Birth)
		case topic.Death:
			m = new(fleetv1.Death)
		case topic.Reply:
			m = new(fleetv1.Reply)
		case topic.Events:
			m = new(fleetv1.Event)
		case topic.Metrics:
			m = new(fleetv1.Metrics)
		case topic.Status:
			m = new(fleetv1.DeploymentStatus)
		case topic.LogStream:
			m = new(fleetv1.LogChunk)
		}
		if m != nil {
			if r.Err = codec.Unmarshal(codec.FromContentType(r.ContentType), p.Payload, m); r.Err == nil {
				r.Message = m
			}
		}
	}
	c.mu.Lock()
	var waiter chan *fleetv1.Reply
	if reply, ok := r.Message.(*fleetv1.Reply); ok && t.Console == c.cfg.ID {
		waiter = c.waiters[string(r.CorrelationData)]
		if waiter != nil {
			select {
			case waiter <- reply:
			default:
				c.log.Warn("reply dropped: waiter is full", "command_id", reply.GetCommandId())
			}
		}
	}
	c.mu.Unlock()
	if ws := c.watching.Load(); ws != nil {
		for _, w := range *ws {
			w(r)
		}
	}
}

// Request is a command on its way to one gateway.
type Request struct {
	c           *Console
	correlation string
	// Replies receives every reply to the command: ACCEPTED, then the final one.
	Replies <-chan *fleetv1.Reply
}

// Send publishes cmd to one gateway with this console's reply topic and a
// fresh correlation id, and returns at once once the broker has it. Call
// Final (or Close) on the request.
func (c *Console) Send(ctx context.Context, tenant, gateway string, cmd *fleetv1.Command) (*Request, error) {
	verb := topic.VerbOf(cmd)
	if verb == "" {
		return nil, errors.New("mqttclient: command has no body")
	}
	payload, err := codec.Marshal(c.cfg.Encoding, cmd)
	if err != nil {
		return nil, err
	}
	return c.SendRaw(ctx, c.cfg.Scheme.Command(tenant, gateway, verb), payload, c.cfg.Encoding.ContentType(),
		c.cfg.Scheme.ConsoleReply(tenant, gateway, c.cfg.ID))
}

// Publish publishes cmd to one gateway with this console's reply topic and
// the command id as correlation data, without awaiting replies: a caller
// that records commands durably matches replies by command id (Watch), also
// those that arrive after a restart. It returns once the broker has it.
func (c *Console) Publish(ctx context.Context, tenant, gateway string, cmd *fleetv1.Command) error {
	verb := topic.VerbOf(cmd)
	if verb == "" {
		return errors.New("mqttclient: command has no body")
	}
	payload, err := codec.Marshal(c.cfg.Encoding, cmd)
	if err != nil {
		return err
	}
	name := c.cfg.Scheme.Command(tenant, gateway, verb)
	p := &paho.Publish{Topic: name, QoS: 1, Payload: payload, Properties: &paho.PublishProperties{
		ContentType: c.cfg.Encoding.ContentType(), ResponseTopic: c.cfg.Scheme.ConsoleReply(tenant, gateway, c.cfg.ID),
		CorrelationData: []byte(cmd.GetId()),
	}}
	if err := c.sign(ctx, p); err != nil {
		return err
	}
	if _, err = c.cm.Publish(ctx, p); err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	return nil
}

// SendRaw publishes payload on a command topic as is (it may be malformed)
// with responseTopic, unless empty, and a fresh correlation id.
func (c *Console) SendRaw(ctx context.Context, topicName string, payload []byte, contentType, responseTopic string) (*Request, error) {
	corr := randomHex(8)
	ch := make(chan *fleetv1.Reply, 8)
	c.mu.Lock()
	c.waiters[corr] = ch
	c.mu.Unlock()
	req := &Request{c: c, correlation: corr, Replies: ch}
	p := &paho.Publish{Topic: topicName, QoS: 1, Payload: payload, Properties: &paho.PublishProperties{ContentType: contentType}}
	if responseTopic != "" {
		p.Properties.ResponseTopic, p.Properties.CorrelationData = responseTopic, []byte(corr)
	}
	if err := c.sign(ctx, p); err != nil {
		req.Close()
		return nil, err
	}
	if _, err := c.cm.Publish(ctx, p); err != nil {
		req.Close()
		return nil, fmt.Errorf("publish %s: %w", topicName, err)
	}
	return req, nil
}

// sign adds the signature of p to its user properties when the console has
// a Signer.
func (c *Console) sign(ctx context.Context, p *paho.Publish) error {
	if c.cfg.Signer == nil {
		return nil
	}
	t, err := c.cfg.Scheme.Parse(p.Topic)
	if err != nil || t.Kind != topic.Command {
		return fmt.Errorf("mqttclient: sign %s: not a command topic", p.Topic)
	}
	keyID, sig, err := c.cfg.Signer.Sign(ctx, t.Tenant, p.Topic, p.Properties.ContentType, p.Payload)
	if err != nil {
		return fmt.Errorf("mqttclient: sign %s: %w", p.Topic, err)
	}
	p.Properties.User = append(p.Properties.User, paho.UserProperty{Key: cmdsig.PropKeyID, Value: keyID},
		paho.UserProperty{Key: cmdsig.PropSignature, Value: sig})
	return nil
}

// Final waits for the final reply (not ACCEPTED) and closes the request.
func (r *Request) Final(ctx context.Context) (*fleetv1.Reply, error) {
	defer r.Close()
	for {
		select {
		case rep := <-r.Replies:
			if rep.GetResult() != fleetv1.Reply_ACCEPTED {
				return rep, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("no final reply: %w", ctx.Err())
		}
	}
}

// Close stops routing replies to the request.
func (r *Request) Close() {
	r.c.mu.Lock()
	delete(r.c.waiters, r.correlation)
	r.c.mu.Unlock()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Resync has the broker send again every birth, death and status it
// retains, which a shared subscription never receives: it subscribes to
// them on the console's own session, waits until none has arrived for
// quiet (the broker sends them at once on subscribe) and unsubscribes. It
// returns how many retained messages arrived meanwhile. Without Share it
// does nothing: the console's subscriptions already get them on every
// connect.
func (c *Console) Resync(ctx context.Context, quiet time.Duration) (uint64, error) {
	if c.cfg.Share == "" {
		return 0, nil
	}
	if !c.resyncing.CompareAndSwap(false, true) {
		return 0, errors.New("mqttclient: resync: one is running already")
	}
	filters := c.resyncFilters()
	var subs []paho.SubscribeOptions
	for _, f := range filters {
		subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 0})
	}
	// Unsubscribed whatever happens: a SUBSCRIBE that timed out may have
	// reached the broker all the same. An UNSUBSCRIBE that fails is tried
	// again, in the background, until the broker takes it.
	defer func() {
		if err := c.unsubscribeResync(ctx, filters); err != nil {
			c.log.Warn("mqttclient: resync: unsubscribe; trying again in the background", "err", err)
			go c.retryUnsubscribeResync(filters)
			return
		}
		c.resyncing.Store(false)
	}()
	before := c.retained.Load()
	if _, err := subscribeRetry(ctx, c.cm, subs); err != nil {
		return 0, fmt.Errorf("mqttclient: resync: %w", err)
	}
	t := time.NewTicker(quiet / 4)
	defer t.Stop()
	last, lastChange := before, time.Now()
	for {
		select {
		case <-ctx.Done():
			return c.retained.Load() - before, fmt.Errorf("mqttclient: resync: %w", ctx.Err())
		case now := <-t.C:
			if n := c.retained.Load(); n != last {
				last, lastChange = n, now
			} else if now.Sub(lastChange) >= quiet {
				return n - before, nil
			}
		}
	}
}

// unsubscribeResync unsubscribes the own session from filters, for at
// most subscribeTimeout.
func (c *Console) unsubscribeResync(ctx context.Context, filters []string) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), subscribeTimeout)
	defer cancel()
	return unsubscribeRetry(uctx, c.cm, filters)
}

// retryUnsubscribeResync tries a Resync's UNSUBSCRIBE again until the
// broker takes it or the console closes; the next Resync waits for it.
func (c *Console) retryUnsubscribeResync(filters []string) {
	defer c.resyncing.Store(false)
	for try := 1; ; try++ {
		select {
		case <-c.cm.Done():
			return
		case <-time.After(resubscribe.Delay(try)):
		}
		if err := c.unsubscribeResync(context.Background(), filters); err == nil {
			c.log.Info("mqttclient: resync: unsubscribed", "tries", try+1)
			return
		}
	}
}
