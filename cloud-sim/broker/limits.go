package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The default limits (see Limits).
const (
	// DefaultMaxPacketSize fits a birth with hundreds of deployments and
	// a command at the agent's default --max-payload (256 KiB) with room
	// to spare; a gateway's publication above it is refused.
	DefaultMaxPacketSize = 1 << 20
	// DefaultMaxConnectSize fits a CONNECT with its Will (a death
	// certificate of a few hundred bytes) and long credentials.
	DefaultMaxConnectSize = 64 << 10
	DefaultConnectTimeout = 10 * time.Second
	DefaultMaxClients     = 100_000
	DefaultMaxPending     = 1024
)

// Limits bound what a client may cost the broker, before and after it
// authenticates. Zero values take the defaults.
type Limits struct {
	// MaxPacketSize is the largest MQTT packet, in bytes, that any client
	// may send; the broker advertises it in CONNACK (MQTT v5 Maximum
	// Packet Size) and disconnects a client that sends a larger one
	// (reason 0x95, packet too large) without reading it.
	MaxPacketSize int
	// MaxConnectSize is the largest CONNECT, the only packet read before
	// the client is authenticated; a larger one closes the connection
	// after its length is read, before its body is.
	MaxConnectSize int
	// ConnectTimeout is how long a new connection may take to complete
	// the TLS handshake and send its CONNECT.
	ConnectTimeout time.Duration
	// MaxClients is how many authenticated clients may be connected at
	// once; one more is refused with CONNACK 0x9F (server busy).
	MaxClients int
	// MaxPending is how many connections may be open without having sent
	// their CONNECT yet; the broker closes new ones beyond it at once.
	MaxPending int
}

func (l Limits) withDefaults() Limits {
	if l.MaxPacketSize <= 0 {
		l.MaxPacketSize = DefaultMaxPacketSize
	}
	if l.MaxConnectSize <= 0 {
		l.MaxConnectSize = DefaultMaxConnectSize
	}
	l.MaxConnectSize = min(l.MaxConnectSize, l.MaxPacketSize)
	if l.ConnectTimeout <= 0 {
		l.ConnectTimeout = DefaultConnectTimeout
	}
	if l.MaxClients <= 0 {
		l.MaxClients = DefaultMaxClients
	}
	if l.MaxPending <= 0 {
		l.MaxPending = DefaultMaxPending
	}
	return l
}

// Check reports the first limit that is not a valid setting.
func (l Limits) Check() error {
	switch {
	case l.MaxPacketSize < 0 || (l.MaxPacketSize > 0 && l.MaxPacketSize < 1024):
		return fmt.Errorf("--mqtt-max-packet-size %d: must be at least 1024 bytes", l.MaxPacketSize)
	case l.MaxPacketSize > 256<<20:
		return fmt.Errorf("--mqtt-max-packet-size %d: must be at most 256 MiB, MQTT's own limit", l.MaxPacketSize)
	case l.MaxConnectSize < 0 || (l.MaxConnectSize > 0 && l.MaxConnectSize < 256):
		return fmt.Errorf("--mqtt-max-connect-size %d: must be at least 256 bytes", l.MaxConnectSize)
	case l.MaxClients < 0:
		return fmt.Errorf("--mqtt-max-clients %d: must not be negative", l.MaxClients)
	case l.MaxPending < 0:
		return fmt.Errorf("--mqtt-max-pending %d: must not be negative", l.MaxPending)
	case l.ConnectTimeout < 0:
		return fmt.Errorf("--mqtt-connect-timeout %s: must not be negative", l.ConnectTimeout)
	}
	return nil
}

// capabilities applies l to mochi's capabilities.
func (l Limits) capabilities(caps *mqtt.Capabilities) {
	caps.MaximumPacketSize = uint32(l.MaxPacketSize)
	caps.MaximumClients = int64(l.MaxClients)
	// mochi caps every message's life at 24 h unless told otherwise: a
	// gateway's retained birth and statuses then vanished from the
	// running broker a day after they were published (and came back from
	// the store after a restart), and commands queued for a gateway
	// offline longer than a day were dropped, though --session-expiry
	// keeps its session a week. A message that asks for an expiry keeps
	// it; queued messages still go with their session. (0 would switch
	// the cap off, but mochi also stamps its acknowledgements with it and
	// would expire them at once.)
	caps.MaximumMessageExpiryInterval = maxMessageExpiry
}

// maxMessageExpiry is the cap on a message's life, in seconds: ten years.
const maxMessageExpiry = 10 * 365 * 24 * 60 * 60

// errConnectRefused is why admit closed a connection.
var errConnectRefused = errors.New("connection refused before CONNECT")

// gate admits new connections to mochi: at most MaxPending at once may be
// waiting for their CONNECT, each for at most ConnectTimeout, and a
// CONNECT larger than MaxConnectSize is refused from its fixed header.
// One gate is shared by every listener.
type gate struct {
	limits  Limits
	pending atomic.Int64
}

// enter counts a new connection as pending; false when there are already
// too many.
func (g *gate) enter() bool {
	if g.pending.Add(1) > int64(g.limits.MaxPending) {
		g.pending.Add(-1)
		return false
	}
	return true
}

// admit reads conn's CONNECT (after the TLS handshake, for a TLS
// connection) within the deadline and returns a connection that replays
// it to mochi; it releases the pending slot enter took. mochi sets the
// deadline anew from the client's keep-alive once it has parsed the
// CONNECT.
func (g *gate) admit(conn net.Conn) (net.Conn, error) {
	defer g.pending.Add(-1)
	if err := conn.SetDeadline(time.Now().Add(g.limits.ConnectTimeout)); err != nil {
		return nil, err
	}
	head, remaining, err := readFixedHeader(conn)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConnectRefused, err)
	}
	if head[0]>>4 != packets.Connect {
		return nil, fmt.Errorf("%w: first packet is not CONNECT", errConnectRefused)
	}
	if remaining+len(head) > g.limits.MaxConnectSize {
		return nil, fmt.Errorf("%w: CONNECT of %d bytes is over the limit of %d", errConnectRefused, remaining+len(head), g.limits.MaxConnectSize)
	}
	buf := make([]byte, len(head)+remaining)
	copy(buf, head)
	if _, err := io.ReadFull(conn, buf[len(head):]); err != nil {
		return nil, fmt.Errorf("%w: %w", errConnectRefused, err)
	}
	return &replayConn{Conn: conn, r: io.MultiReader(bytes.NewReader(buf), conn)}, nil
}

// readFixedHeader reads an MQTT fixed header: the type byte and the
// remaining length (one to four bytes).
func readFixedHeader(r io.Reader) (head []byte, remaining int, err error) {
	head = make([]byte, 1, 5)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, 0, err
	}
	var b [1]byte
	for shift := 0; ; shift += 7 {
		if shift > 21 {
			return nil, 0, errors.New("malformed remaining length")
		}
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, 0, err
		}
		head = append(head, b[0])
		remaining |= int(b[0]&0x7f) << shift
		if b[0]&0x80 == 0 {
			return head, remaining, nil
		}
	}
}

// replayConn reads what admit already read before the rest of the
// connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// limitsHook advertises the maximum packet size in CONNACK, so that MQTT
// v5 clients (paho among them) refuse an oversized publication themselves
// rather than being disconnected for it.
type limitsHook struct {
	mqtt.HookBase
	maxPacketSize uint32
}

func (h *limitsHook) ID() string { return "limits" }

func (h *limitsHook) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

func (h *limitsHook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == packets.CodeSuccess.Code {
		pk.Properties.MaximumPacketSize = h.maxPacketSize
	}
	return pk
}
