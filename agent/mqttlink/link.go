// Package mqttlink holds the agent's MQTT v5 session with the cloud.
//
// It connects with clean start false and a session expiry, so that QoS 1
// commands sent while the gateway is offline wait in the broker; it
// reconnects with exponential back-off and full jitter; on every connect it
// subscribes, then publishes the birth before anything else, and only then
// lets other publications through.
package mqttlink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/backoff"
)

// Message is an MQTT publication.
type Message struct {
	Topic           string
	Payload         []byte
	QoS             byte
	Retain          bool
	ContentType     string
	CorrelationData []byte
}

// Inbound is a received publication.
type Inbound struct {
	Topic           string
	Payload         []byte
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	// UserProperties are the MQTT v5 user properties; of a repeated key,
	// the first value.
	UserProperties map[string]string
}

// Config configures a Link.
type Config struct {
	BrokerURL     *url.URL // mqtt://, tcp://, tls://, ssl:// or mqtts://
	ClientID      string
	Username      string
	Password      []byte
	TLS           *tls.Config // for tls:// URLs; nil means system roots
	KeepAlive     time.Duration
	SessionExpiry time.Duration
	Backoff       backoff.Policy
	// MaxPacketSize, when set, is advertised in CONNECT as the MQTT v5
	// Maximum Packet Size: the broker does not send this client a packet
	// larger than that (it drops it, and the connection stays up).
	MaxPacketSize uint32

	// Subscriptions are subscribed at QoS 1 on every connect.
	Subscriptions []string
	// SetupTimeout bounds a connection's set-up (the subscription, then
	// the birth); one that fails or times out is tried again, after the
	// back-off, for as long as the connection lasts. 30 s when zero.
	SetupTimeout time.Duration
	// Will is called before every connection attempt and returns the
	// death certificate to register as the MQTT Will for that connection.
	Will func() (Message, error)
	// Birth is called on every connect, after subscribing; its message is
	// published before any other.
	Birth func() (Message, error)
	// OnReady is called, in a goroutine of its own, once the birth of a
	// connection has been published.
	OnReady func(ctx context.Context)
	// OnMessage is called for each received publication, one at a time. The
	// broker is sent the acknowledgement when it returns, so what it must not
	// lose it should have stored durably by then. It must not publish and
	// wait: do that in another goroutine.
	OnMessage func(Inbound)

	Logger *slog.Logger
}

// Link is a connection to the broker that outlives network failures.
type Link struct {
	cfg Config
	log *slog.Logger
	pc  autopaho.ClientConfig

	mu    sync.Mutex
	cm    *autopaho.ConnectionManager // set by Connect
	gen   uint64                      // incremented on every connection up
	ready chan struct{}               // closed while the current connection's birth is out
	up    bool                        // a connection is up (its birth may be on its way)
	upAt  time.Time                   // when the current connection came up
	flaps int                         // connections in a row that dropped soon after coming up
}

// stableAfter is how long a connection must last for the reconnect back-off
// to start over. A broker that accepts and then drops the connection at once
// would otherwise be hammered with reconnects.
const stableAfter = 30 * time.Second

// ErrRefused is wrapped when the broker refuses a publication (for example
// an ACL denial), as opposed to a connection failure.
var ErrRefused = errors.New("broker refused the publication")

// New checks cfg and returns an unconnected link.
func New(cfg Config) (*Link, error) {
	switch {
	case cfg.BrokerURL == nil:
		return nil, errors.New("mqttlink: BrokerURL is required")
	case cfg.ClientID == "":
		return nil, errors.New("mqttlink: ClientID is required")
	case cfg.Will == nil || cfg.Birth == nil || cfg.OnMessage == nil:
		return nil, errors.New("mqttlink: Will, Birth and OnMessage are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backoff.Base == 0 {
		cfg.Backoff = backoff.Policy{Base: time.Second, Max: 2 * time.Minute}
	}
	if cfg.SetupTimeout <= 0 {
		cfg.SetupTimeout = 30 * time.Second
	}
	l := &Link{cfg: cfg, log: cfg.Logger, ready: make(chan struct{})}

	u := *cfg.BrokerURL
	switch u.Scheme {
	case "mqtts", "ssl":
		u.Scheme = "tls"
	case "tcp":
		u.Scheme = "mqtt"
	}
	pc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&u},
		TlsCfg:                        cfg.TLS,
		KeepAlive:                     uint16(cfg.KeepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(cfg.SessionExpiry / time.Second),
		ReconnectBackoff:              l.reconnectDelay,
		ConnectTimeout:                10 * time.Second,
		ConnectUsername:               cfg.Username,
		ConnectPassword:               cfg.Password,
		ConnectPacketBuilder:          l.buildConnect,
		OnConnectionUp:                l.onUp,
		OnConnectionDown:              l.onDown,
		OnConnectError: func(err error) {
			l.log.Warn("connection attempt failed", "broker", cfg.BrokerURL.Redacted(), "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					l.cfg.OnMessage(inbound(pr.Packet))
					return true, nil
				},
			},
			OnClientError: func(err error) { l.log.Warn("connection error", "err", err) },
			OnServerDisconnect: func(d *paho.Disconnect) {
				l.log.Warn("broker closed the connection", "reason", d.ReasonCode)
			},
		},
	}
	l.pc = pc
	return l, nil
}

// Connect starts connecting in the background and returns at once. The link
// lives until ctx is done or Close is called.
func (l *Link) Connect(ctx context.Context) error {
	cm, err := autopaho.NewConnection(ctx, l.pc)
	if err != nil {
		return fmt.Errorf("mqttlink: %w", err)
	}
	l.mu.Lock()
	l.cm = cm
	l.mu.Unlock()
	return nil
}

func inbound(p *paho.Publish) Inbound {
	in := Inbound{Topic: p.Topic, Payload: p.Payload}
	if p.Properties != nil {
		in.ContentType = p.Properties.ContentType
		in.ResponseTopic = p.Properties.ResponseTopic
		in.CorrelationData = p.Properties.CorrelationData
		for _, up := range p.Properties.User {
			if in.UserProperties == nil {
				in.UserProperties = map[string]string{}
			}
			if _, ok := in.UserProperties[up.Key]; !ok {
				in.UserProperties[up.Key] = up.Value
			}
		}
	}
	return in
}

// buildConnect registers the Will of the connection about to be attempted
// and advertises the largest packet the link takes.
func (l *Link) buildConnect(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
	will, err := l.cfg.Will()
	if err != nil {
		return nil, fmt.Errorf("will: %w", err)
	}
	cp.WillMessage = &paho.WillMessage{Topic: will.Topic, Payload: will.Payload, QoS: will.QoS, Retain: will.Retain}
	cp.WillProperties = &paho.WillProperties{ContentType: will.ContentType}
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	// The MQTT default, which paho turns off whenever it sends connect
	// properties: without it a broker may strip the user properties of
	// the publications it forwards (mochi-mqtt does), among them the
	// commands' signatures.
	cp.Properties.RequestProblemInfo = true
	if n := l.cfg.MaxPacketSize; n > 0 {
		cp.Properties.MaximumPacketSize = &n
	}
	return cp, nil
}

// onUp must not block: it starts the connection's set-up in a goroutine.
func (l *Link) onUp(cm *autopaho.ConnectionManager, ca *paho.Connack) {
	l.mu.Lock()
	l.cm = cm
	l.gen++
	gen := l.gen
	l.up, l.upAt = true, time.Now()
	l.mu.Unlock()
	l.log.Info("connected", "broker", l.cfg.BrokerURL.Redacted(), "session_present", ca.SessionPresent)
	go l.establish(gen)
}

func (l *Link) onDown() bool {
	l.mu.Lock()
	l.gen++
	l.up = false
	if time.Since(l.upAt) < stableAfter {
		l.flaps++
	} else {
		l.flaps = 0
	}
	select {
	case <-l.ready:
		l.ready = make(chan struct{})
	default:
	}
	l.mu.Unlock()
	l.log.Warn("disconnected; reconnecting")
	return true
}

// reconnectDelay is the back-off before connection attempt n after a loss
// (n = 0 is the first attempt); connections that flapped count as attempts.
func (l *Link) reconnectDelay(n int) time.Duration {
	l.mu.Lock()
	flaps := l.flaps
	l.mu.Unlock()
	return l.cfg.Backoff.Delay(n + flaps)
}

// establish subscribes, publishes the birth and opens the gate for the
// connection numbered gen. A set-up that fails (no SUBACK in time, a birth
// not acknowledged) is tried again after the back-off for as long as that
// connection lasts: a broker too busy to answer within SetupTimeout left
// the gateway connected but unborn, deaf to commands, until the
// connection dropped for some other reason (TestSetupTriedAgain; 152 of
// TestReplicasShareIngest's 300 simulated gateways under make test's
// load). If the connection drops, the next connection's establish takes
// over.
func (l *Link) establish(gen uint64) {
	cm := l.conn()
	for attempt := 0; ; attempt++ {
		err := l.setUp(gen)
		if err == nil {
			return
		}
		wait := l.cfg.Backoff.Delay(attempt)
		l.log.Error("connection set up failed; trying again on the same connection", "err", err, "in", wait)
		select {
		case <-time.After(wait):
		case <-cm.Done():
			return
		}
		if !l.current(gen) {
			return
		}
	}
}

// current reports whether gen is the connection that is up.
func (l *Link) current(gen uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen == gen && l.up
}

// setUp subscribes and publishes the birth on connection gen, and opens
// the gate unless another connection has come up since.
func (l *Link) setUp(gen uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.SetupTimeout)
	defer cancel()
	if len(l.cfg.Subscriptions) > 0 {
		sub := &paho.Subscribe{}
		for _, f := range l.cfg.Subscriptions {
			sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1})
		}
		sa, err := l.conn().Subscribe(ctx, sub)
		if sa == nil {
			return fmt.Errorf("subscribe: %w", err)
		}
		// A refusal is logged, not fatal: with a present session the broker
		// keeps the subscriptions it already has, and the gateway must stay
		// reachable (its birth out) either way.
		for i, rc := range sa.Reasons {
			if rc >= 0x80 && i < len(sub.Subscriptions) {
				l.log.Error("broker refused subscription", "filter", sub.Subscriptions[i].Topic, "reason", fmt.Sprintf("%#x", rc))
			}
		}
	}
	birth, err := l.cfg.Birth()
	if err != nil {
		return fmt.Errorf("build birth: %w", err)
	}
	if err := l.publishNow(ctx, birth); err != nil {
		return fmt.Errorf("publish birth: %w", err)
	}
	l.mu.Lock()
	if l.gen != gen {
		l.mu.Unlock()
		return nil
	}
	close(l.ready)
	l.mu.Unlock()
	if l.cfg.OnReady != nil {
		go l.cfg.OnReady(context.Background())
	}
	return nil
}

func (l *Link) conn() *autopaho.ConnectionManager {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cm
}

func (l *Link) readyChan() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ready
}

// Ready reports whether the link is connected and the birth is out.
func (l *Link) Ready() bool {
	select {
	case <-l.readyChan():
		return true
	default:
		return false
	}
}

// Publish sends m once the link is ready, retrying across reconnects until
// the broker acknowledges it (QoS 1) or it is written (QoS 0), or ctx ends.
// A publication the broker refuses is not retried: the error wraps ErrRefused.
func (l *Link) Publish(ctx context.Context, m Message) error {
	retry := backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}
	for attempt := 0; ; attempt++ {
		select {
		case <-time.After(retry.Delay(attempt)):
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case <-l.readyChan():
		case <-ctx.Done():
			return ctx.Err()
		}
		err := l.publishNow(ctx, m)
		if err == nil || errors.Is(err, ErrRefused) || ctx.Err() != nil {
			return err
		}
		l.log.Debug("publish failed; will retry", "topic", m.Topic, "err", err)
	}
}

// TryPublish sends m only if the link is ready now; it does not retry. It
// suits QoS 0 heartbeats that are worthless later.
func (l *Link) TryPublish(ctx context.Context, m Message) error {
	if !l.Ready() {
		return autopaho.ConnectionDownError
	}
	return l.publishNow(ctx, m)
}

func (l *Link) publishNow(ctx context.Context, m Message) error {
	p := &paho.Publish{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain}
	if m.ContentType != "" || m.CorrelationData != nil {
		p.Properties = &paho.PublishProperties{ContentType: m.ContentType, CorrelationData: m.CorrelationData}
	}
	cm := l.conn()
	if cm == nil {
		return autopaho.ConnectionDownError
	}
	pr, err := cm.Publish(ctx, p)
	if pr != nil && pr.ReasonCode >= 0x80 {
		return fmt.Errorf("%w: %s: reason code %#x", ErrRefused, m.Topic, pr.ReasonCode)
	}
	return err
}

// Close publishes last (if set and a connection is up), then disconnects
// cleanly, so that the broker does not publish the Will. A connection whose
// birth is still on its way gets last too: the birth may reach the
// broker, and a clean disconnect drops the Will, so without it nothing
// would say that this session ended.
func (l *Link) Close(ctx context.Context, last *Message) error {
	l.mu.Lock()
	up := l.up
	l.mu.Unlock()
	if last != nil && up {
		if err := l.publishNow(ctx, *last); err != nil {
			l.log.Warn("publish on close failed", "topic", last.Topic, "err", err)
		}
	}
	if cm := l.conn(); cm != nil {
		return cm.Disconnect(ctx)
	}
	return nil
}
