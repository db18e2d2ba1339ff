// Package mqttclient is the cloud's MQTT client: it sends commands to
// gateways and awaits their replies, and hands everything gateways publish
// (births, deaths, replies, statuses, events, metrics) to its watchers.
package mqttclient

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
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
	// Metrics or DeploymentStatus; nil with Err set when it does not decode,
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

	mu       sync.Mutex
	waiters  map[string]chan *fleetv1.Reply
	watchers map[int]func(Received)
	nextW    int
}

// Dial connects and subscribes to everything gateways publish under the
// scheme. It returns once the subscription is in place; ctx bounds that
// wait, not the connection, which lives until Close.
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Console{cfg: cfg, log: cfg.Logger, waiters: map[string]chan *fleetv1.Reply{}, watchers: map[int]func(Received){}}
	if cfg.Watch != nil {
		c.Watch(cfg.Watch)
	}
	subscribed := make(chan error, 1)
	var once sync.Once
	filters := []string{}
	for _, k := range []topic.Kind{topic.Birth, topic.Death, topic.Reply, topic.Status, topic.Events, topic.Metrics} {
		filters = append(filters, cfg.Scheme.Filter(k))
	}
	u := *cfg.BrokerURL
	if u.Scheme == "tcp" {
		u.Scheme = "mqtt"
	}
	// ctx bounds the dial only; the connection lives until Close.
	cm, err := autopaho.NewConnection(context.WithoutCancel(ctx), autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: cfg.SessionExpiry == 0,
		SessionExpiryInterval:         uint32(cfg.SessionExpiry / time.Second),
		ReconnectBackoff:              backoff.Policy{Base: 200 * time.Millisecond, Max: 5 * time.Second}.Delay,
		AttemptConnection:             dialer(u.Scheme),
		TlsCfg:                        cfg.TLS,
		ConnectUsername:               cfg.Username,
		ConnectPassword:               cfg.Password,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go func() {
				sub := &paho.Subscribe{}
				for _, f := range filters {
					qos := byte(1)
					if cfg.LatestOnly && f != cfg.Scheme.Filter(topic.Reply) && f != cfg.Scheme.Filter(topic.Events) {
						qos = 0
					}
					sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: qos})
				}
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := cm.Subscribe(sctx, sub)
				if err != nil {
					c.log.Warn("mqttclient subscribe", "err", err)
				}
				once.Do(func() { subscribed <- err })
			}()
		},
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				c.receive(pr.Packet)
				return true, nil
			}},
		},
	})
	if err != nil {
		return nil, err
	}
	c.cm = cm
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
	return c, nil
}

// dialer connects to a plain-TCP broker (mqtt://) with a read buffer:
// paho reads each packet's header a byte at a time, a system call each
// without one, which weighed on a controller receiving tens of thousands
// of statuses a second. Other schemes (TLS, websockets) are dialed by
// autopaho itself (nil).
func dialer(scheme string) func(context.Context, autopaho.ClientConfig, *url.URL) (net.Conn, error) {
	if scheme != "mqtt" {
		return nil
	}
	return func(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		// Writes come from many goroutines: serialise them, as autopaho's
		// own dialer does.
		return packets.NewThreadSafeConn(readBuffered{Conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}), nil
	}
}

type readBuffered struct {
	net.Conn
	r *bufio.Reader
}

func (c readBuffered) Read(p []byte) (int, error) { return c.r.Read(p) }

// ID is the console's id.
func (c *Console) ID() string { return c.cfg.ID }

// Close disconnects.
func (c *Console) Close() error { return c.cm.Disconnect(context.Background()) }

// Watch calls fn for every publication received from now on, one at a
// time, until the returned cancel is called. fn must not block.
func (c *Console) Watch(fn func(Received)) (cancel func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextW
	c.nextW++
	c.watchers[id] = fn
	return func() {
		c.mu.Lock()
		delete(c.watchers, id)
		c.mu.Unlock()
	}
}

func (c *Console) receive(p *paho.Publish) {
	r := Received{Name: p.Topic, Payload: p.Payload, Retained: p.Retain, At: time.Now()}
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
	ws := make([]func(Received), 0, len(c.watchers))
	for _, w := range c.watchers {
		ws = append(ws, w)
	}
	c.mu.Unlock()
	for _, w := range ws {
		w(r)
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
