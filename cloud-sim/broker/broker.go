// Package broker runs the embedded MQTT v5 broker (mochi-mqtt) that
// cloud-sim serves, the demo uses and most tests run against.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	bbolt "go.etcd.io/bbolt"

	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config configures a Broker.
type Config struct {
	// Addr is the TCP address to listen on; "127.0.0.1:0" when empty.
	Addr string
	// StorePath, when set, persists sessions, subscriptions, queued and
	// retained messages in bbolt files, so that a restarted broker still
	// holds the commands queued for offline gateways. A retained message
	// is written before its PUBACK (see boltStore).
	StorePath string
	// Auth, when set, authenticates every client and confines gateways to
	// their own topics under Scheme (see Identity.Allowed); without it
	// every client may do anything, as tests of the agent alone want.
	Auth   Authenticator
	Scheme topic.Scheme
	// MaxPendingWrites is the length of mochi's outbound channel per
	// client, which mochi allocates in full when the client connects and
	// beyond which it drops messages, QoS 1 included
	// (DefaultMaxPendingWrites when 0). The channel only hands packets to
	// the client's write loop, which writes to the connection's queue
	// (see queuedConn) without waiting for the client to read, so it stays
	// near empty even for a subscriber far behind. (mochi's default,
	// 8,192, cost 64 KiB a client, 640 MiB for 10,000 gateways.)
	MaxPendingWrites int
	// MaxQueuedBytes bounds the bytes written to one client that it has
	// not read yet (DefaultMaxQueuedBytes when 0); the queue grows to it
	// on demand and gives its memory back once drained.
	MaxQueuedBytes int
	// Limits bound packet sizes and connections (see Limits).
	Limits Limits
	// TLSAddr, when set, is a second listener serving MQTT over TLS
	// (mqtts://) with TLS, which must then hold the broker's certificate.
	TLSAddr string
	TLS     *tls.Config
	Logger  *slog.Logger
}

// Broker is a running embedded broker.
type Broker struct {
	srv     *mqtt.Server
	addr    string
	tlsAddr string
	acl     *aclHook   // nil without Config.Auth
	store   *boltStore // nil without Config.StorePath
	ends    *endHook
	att     *attachments
	ingress *ingressHook
}

// Start listens and serves in the background.
func Start(cfg Config) (*Broker, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Limits.Check(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if cfg.TLSAddr != "" && (cfg.TLS == nil || len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil) {
		return nil, errors.New("broker: a TLS listener needs a certificate (--mqtt-tls-cert and --mqtt-tls-key)")
	}
	limits := cfg.Limits.withDefaults()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen: %w", err)
	}
	lns := []*boundListener{{id: "tcp", ln: ln}}
	if cfg.TLSAddr != "" {
		tln, err := net.Listen("tcp", cfg.TLSAddr)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("broker: listen TLS: %w", err)
		}
		lns = append(lns, &boundListener{id: "tls", ln: tls.NewListener(tln, cfg.TLS)})
	}
	closeAll := func() {
		for _, l := range lns {
			l.ln.Close()
		}
	}
	caps := mqtt.NewDefaultServerCapabilities()
	if cfg.MaxPendingWrites <= 0 {
		cfg.MaxPendingWrites = DefaultMaxPendingWrites
	}
	if cfg.MaxQueuedBytes <= 0 {
		cfg.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	caps.MaximumClientWritesPending = int32(cfg.MaxPendingWrites)
	limits.capabilities(caps)
	srv := mqtt.New(&mqtt.Options{Logger: cfg.Logger, Capabilities: caps})
	b, err := addHooks(srv, cfg, limits)
	if err != nil {
		closeAll()
		srv.Close()
		return nil, err
	}
	g := &gate{limits: limits}
	for _, l := range lns {
		l.gate, l.maxQueued, l.att = g, cfg.MaxQueuedBytes, b.att
		if err := srv.AddListener(l); err != nil {
			closeAll()
			srv.Close()
			return nil, err
		}
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.addr = ln.Addr().String()
	if len(lns) > 1 {
		b.tlsAddr = lns[1].ln.Addr().String()
	}
	return b, nil
}

// addHooks adds the broker's hooks to srv, in the order mochi runs them,
// and returns the Broker that holds them.
func addHooks(srv *mqtt.Server, cfg Config, limits Limits) (*Broker, error) {
	b := &Broker{srv: srv, ends: &endHook{waiting: map[*mqtt.Client]chan struct{}{}}, att: newAttachments(), ingress: newIngressHook(cfg.Scheme)}
	var access mqtt.Hook = new(auth.AllowHook)
	if cfg.Auth != nil {
		b.acl = &aclHook{auth: cfg.Auth, scheme: cfg.Scheme, ids: map[string]Identity{}}
		access = b.acl
	}
	for _, h := range []mqtt.Hook{&limitsHook{maxPacketSize: uint32(limits.MaxPacketSize)}, new(shareHook), access, b.ingress} {
		if err := srv.AddHook(h, nil); err != nil {
			return nil, err
		}
	}
	if cfg.StorePath != "" {
		store, err := addStore(srv, cfg.StorePath)
		if err != nil {
			return nil, err
		}
		b.store = store
	}
	// The retain guard last, so that it sees a PUBLISH only when every
	// other hook accepted it.
	for _, h := range []mqtt.Hook{b.ends, newTakeoverHook(srv, b.att, srv.Log), newRetainGuard()} {
		if err := srv.AddHook(h, nil); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// addStore persists the broker's sessions and retained messages in bbolt
// files at path (retained messages in path.retained, through the
// write-ahead log path.retained.log: see retainLog).
func addStore(srv *mqtt.Server, path string) (*boltStore, error) {
	// NoSync: writes reach the OS at once, so a crashed broker loses
	// nothing; a power cut may lose the last seconds, as with Mosquitto's
	// periodic autosave. An fsync per message would bound the broker to a
	// few hundred messages a second.
	rdb, err := bbolt.Open(path+".retained", 0o600, &bbolt.Options{Timeout: 5 * time.Second, NoSync: true})
	if err != nil {
		return nil, fmt.Errorf("broker: store %s.retained: %w", path, err)
	}
	rlog, err := openRetainLog(rdb, path+".retained.log", retainLogMax)
	if err != nil {
		rdb.Close()
		return nil, fmt.Errorf("broker: store %s.retained.log: %w", path, err)
	}
	store := &boltStore{Hook: new(bolt.Hook), rdb: rdb, rlog: rlog}
	err = srv.AddHook(store, &bolt.Options{Path: path, Options: &bbolt.Options{Timeout: 5 * time.Second, NoSync: true}})
	if err != nil {
		rlog.Close()
		rdb.Close()
		return nil, fmt.Errorf("broker: store %s: %w", path, err)
	}
	return store, nil
}

// Disconnect revokes what client id holds at the broker: its live
// connection is closed at once (a DISCONNECT "not authorized" first; the
// broker publishes its Will as for any lost connection) and the identity
// it authenticated with is forgotten, so that every later ACL check asks
// the Authenticator again. With deleteSession its session goes too: its
// subscriptions and the messages queued for it. It reports whether the
// client was connected.
func (b *Broker) Disconnect(clientID string, deleteSession bool) bool {
	if b.acl != nil {
		b.acl.forget(clientID)
	}
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok {
		return false
	}
	live := !cl.Closed()
	if live {
		b.closeConn(cl)
	}
	// Not a connection that came since: checked and removed under mochi's
	// session lock (RemoveSession).
	if deleteSession && b.srv.RemoveSession(cl) { // its messages in flight go from the store too
		if b.store != nil {
			b.store.OnClientExpired(cl)
		}
	}
	return live
}

// closeConn sends cl a DISCONNECT "not authorized" and closes its network
// connection, leaving the rest to cl's read loop, which fails and ends the
// session as for any lost connection: its Will is published. (mochi's
// DisconnectClient stops the client instead; a read loop that notices the
// stop between two packets returns without an error, and the Will is
// dropped.) It returns once the read loop has ended (at most
// connEndTimeout).
func (b *Broker) closeConn(cl *mqtt.Client) {
	ended := b.ends.wait(cl)
	defer b.ends.forget(cl)
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
		ReasonCode:  packets.ErrNotAuthorized.Code,
		Properties:  packets.Properties{ReasonString: packets.ErrNotAuthorized.Reason},
	})
	if cl.Net.Conn == nil {
		cl.Stop(packets.ErrNotAuthorized)
		return
	}
	_ = cl.Net.Conn.Close()
	select {
	case <-ended:
	case <-time.After(connEndTimeout):
		cl.Stop(packets.ErrNotAuthorized)
	}
}

// connEndTimeout bounds how long Disconnect waits for a closed
// connection's read loop to end.
const connEndTimeout = 5 * time.Second

// endHook tells Disconnect when a client's read loop has ended: mochi
// calls OnDisconnect after it has published the Will and stopped the
// client.
type endHook struct {
	mqtt.HookBase
	mu      sync.Mutex
	waiting map[*mqtt.Client]chan struct{} // guarded by mu
}

func (h *endHook) ID() string { return "connection-end" }

func (h *endHook) Provides(b byte) bool { return b == mqtt.OnDisconnect }

// wait returns a channel closed when cl's read loop ends.
func (h *endHook) wait(cl *mqtt.Client) <-chan struct{} {
	ch := make(chan struct{})
	h.mu.Lock()
	h.waiting[cl] = ch
	h.mu.Unlock()
	return ch
}

func (h *endHook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	delete(h.waiting, cl)
	h.mu.Unlock()
}

func (h *endHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	if ch, ok := h.waiting[cl]; ok {
		close(ch)
		delete(h.waiting, cl)
	}
	h.mu.Unlock()
}

// Messages reports how many PUBLISH packets the broker has received and
// sent since it started.
func (b *Broker) Messages() (received, sent int64) {
	return atomic.LoadInt64(&b.srv.Info.MessagesReceived), atomic.LoadInt64(&b.srv.Info.MessagesSent)
}

// FromGateways reports how many births, deaths (Wills included),
// statuses, events and metrics gateways have published through the broker
// since it started: what the controller replicas sharing ingest apply
// between them (Controller.Received), each once.
func (b *Broker) FromGateways() int64 { return b.ingress.n.Load() }

// Dropped reports how many messages to clients the broker has dropped
// since it started: because a client's outbound channel was full (never a
// controller's: those are written to it at once instead), or because it
// had 8,192 QoS 1 messages in flight already.
func (b *Broker) Dropped() int64 {
	return atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped)
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// URL is the broker's mqtt:// URL.
func (b *Broker) URL() string { return "mqtt://" + b.addr }

// TLSURL is the broker's mqtts:// URL; "" without a TLS listener.
func (b *Broker) TLSURL() string {
	if b.tlsAddr == "" {
		return ""
	}
	return "mqtts://" + b.tlsAddr
}

// Close disconnects every client and stops the broker. Clients' Wills are
// published as for any lost connection.
func (b *Broker) Close() error { return b.srv.Close() }

// boundListener serves an already-bound net.Listener, so that a broker on
// port 0 knows its address before serving. It tracks the connections it
// accepted, so that Close also ends one accepted while closing; the server's
// Close waits for every connection to end.
type boundListener struct {
	id        string
	ln        net.Listener
	gate      *gate
	maxQueued int // bytes, per connection (see queuedConn)
	att       *attachments
	log       *slog.Logger

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

func (l *boundListener) Init(log *slog.Logger) error { l.log = log; return nil }
func (l *boundListener) ID() string                  { return l.id }
func (l *boundListener) Address() string             { return l.ln.Addr().String() }
func (l *boundListener) Protocol() string            { return "tcp" }

func (l *boundListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				l.log.Warn("accept", "err", err)
			}
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			conn.Close()
			return
		}
		if l.conns == nil {
			l.conns = map[net.Conn]struct{}{}
		}
		l.conns[conn] = struct{}{}
		l.mu.Unlock()
		if !l.gate.enter() {
			l.log.Debug("connection refused: too many connections waiting for their CONNECT", "remote", conn.RemoteAddr(), "limit", l.gate.limits.MaxPending)
			l.forget(conn)
			continue
		}
		go func() {
			defer l.forget(conn)
			admitted, err := l.gate.admit(conn)
			if err != nil {
				l.log.Debug("connection refused", "remote", conn.RemoteAddr(), "err", err)
				return
			}
			queued := newQueuedConn(admitted, l.maxQueued)
			defer queued.Close() // before forget: what is queued goes first
			end := l.att.begin(queued)
			defer end()
			if err := establish(l.id, queued); err != nil {
				l.log.Debug("connection ended", "err", err)
			}
		}()
	}
}

// forget closes conn and stops tracking it.
func (l *boundListener) forget(conn net.Conn) {
	conn.Close()
	l.mu.Lock()
	delete(l.conns, conn)
	l.mu.Unlock()
}

func (l *boundListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.ln.Close()
	l.mu.Unlock()
	closeClients(l.id)
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
}
