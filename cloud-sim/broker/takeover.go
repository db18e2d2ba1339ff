package broker

import (
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// attachments tracks the connections mochi serves, each until mochi is
// done with it: its Will published, its session cleaned up and, for a
// session that expires with the connection, the client removed from
// mochi's map of clients.
type attachments struct {
	mu    sync.Mutex
	ended map[net.Conn]chan struct{} // guarded by mu
}

func newAttachments() *attachments {
	return &attachments{ended: map[net.Conn]chan struct{}{}}
}

// begin tracks conn until the returned end is called.
func (a *attachments) begin(conn net.Conn) (end func()) {
	ch := make(chan struct{})
	a.mu.Lock()
	a.ended[conn] = ch
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		delete(a.ended, conn)
		a.mu.Unlock()
		close(ch)
	}
}

// of returns a channel closed when mochi is done with conn; nil when conn
// is not tracked (done with already, or not from a listener of ours).
func (a *attachments) of(conn net.Conn) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ended[conn]
}

// takeoverHook lets a client's new connection take over its session only
// once mochi is done with the connection before it.
//
// mochi ends a connection whose session expires with it by removing the
// client from its map by client ID, and its subscriptions by client ID,
// after checking that no new connection has taken the session over. A new
// connection that takes over between that check and the removal (both on
// the old connection's goroutine, with hooks between them) is added to the
// map and then removed from it: the broker then no longer knows the
// client is connected (Disconnect of a revoked gateway found nothing to
// close), a later connection with the same ID no longer takes it over,
// and subscriptions it made in the meantime can be lost.
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server
	att *attachments
	log *slog.Logger
}

func (h *takeoverHook) ID() string { return "session-takeover" }

func (h *takeoverHook) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }

// OnSessionEstablish runs on the new connection's goroutine just before
// mochi takes the old session over. It ends the old connection as mochi
// would (DISCONNECT 0x8E, session taken over) and waits, at most
// connEndTimeout, until mochi is done with it.
func (h *takeoverHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	ended := h.att.of(old.Net.Conn)
	if ended == nil {
		return
	}
	if !old.Closed() {
		_ = h.srv.DisconnectClient(old, packets.ErrSessionTakenOver)
	}
	select {
	case <-ended:
	case <-time.After(connEndTimeout):
		h.log.Warn("session taken over before the connection before it ended", "client", cl.ID, "waited", connEndTimeout)
	}
}
