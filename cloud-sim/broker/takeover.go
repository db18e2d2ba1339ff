package broker

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
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
// mochi v2.7.9 ended a connection whose session expires with it by
// removing the client from its map by client ID, and its subscriptions by
// client ID, after checking that no new connection had taken the session
// over. A new connection that took over between that check and the
// removal was added to the map and then removed from it: the broker then
// no longer knew the client was connected (Disconnect of a revoked gateway
// found nothing to close), a later connection with the same ID no longer
// took it over, and subscriptions it made in the meantime could be lost.
// mochi's copy is patched for that now (patch 4 in
// third_party/mochi-mqtt-server/PATCHES.md); the wait stays, as the
// hand-over below was built and tested with it.
//
// It also hands the new connection what mochi gave the old one while the
// session moved. mochi marks the old client taken over and copies its
// messages in flight to the new one, clears the old one's, and only then
// puts the new client in its map by ID: a QoS 1 or 2 publication routed
// to the client meanwhile went into the old client's messages in flight,
// copied to nobody, and was lost without a count (a persistent session
// cut while its messages flowed lost hundreds; its store's deletions of
// what it cleared made the window last a second). Those publications are
// kept here as mochi records them (OnQosPublish, for a client taken over)
// and sent to the new connection once its session is established;
// one recorded after that goes to the client that holds the ID by then.
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server
	att *attachments
	log *slog.Logger

	mu    sync.Mutex
	moves map[string][]packets.Packet // guarded by mu: client id → what came to the old client while its session moved
}

func newTakeoverHook(srv *mqtt.Server, att *attachments, log *slog.Logger) *takeoverHook {
	return &takeoverHook{srv: srv, att: att, log: log, moves: map[string][]packets.Packet{}}
}

func (h *takeoverHook) ID() string { return "session-takeover" }

func (h *takeoverHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnQosPublish || b == mqtt.OnSessionEstablished || b == mqtt.OnClientExpired
}

// OnClientExpired forgets what a session that expired kept while it
// moved (its connection never established).
func (h *takeoverHook) OnClientExpired(cl *mqtt.Client) {
	h.mu.Lock()
	delete(h.moves, cl.ID)
	h.mu.Unlock()
}

// OnSessionEstablish runs on the new connection's goroutine just before
// mochi takes the old session over. It ends the old connection as mochi
// would (DISCONNECT 0x8E, session taken over) and waits, at most
// connEndTimeout, until mochi is done with it; for a session resumed (no
// clean start), it starts keeping what comes to the old client.
func (h *takeoverHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	if !pk.Connect.Clean && !(old.Properties.Clean && old.Properties.ProtocolVersion < 5) { // mochi resumes it
		h.mu.Lock()
		if _, moving := h.moves[cl.ID]; !moving { // one that never established keeps its own
			h.moves[cl.ID] = nil
		}
		h.mu.Unlock()
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

// OnQosPublish keeps a publication mochi put in flight to a client taken
// over, or sends it to the client that now holds the ID.
func (h *takeoverHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !cl.IsTakenOver() {
		return
	}
	h.mu.Lock()
	kept, moving := h.moves[cl.ID]
	if moving {
		h.moves[cl.ID] = append(kept, pk.Copy(false))
	}
	h.mu.Unlock()
	if cur, ok := h.srv.Clients.Get(cl.ID); !moving && ok && cur != cl && !cur.IsTakenOver() {
		h.send(cur, pk)
	}
}

// OnSessionEstablished sends the new connection what its old one was
// given while the session moved.
func (h *takeoverHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	kept, moving := h.moves[cl.ID]
	delete(h.moves, cl.ID)
	h.mu.Unlock()
	if !moving {
		return
	}
	for _, pk := range kept {
		h.send(cl, pk)
	}
	if len(kept) > 0 {
		h.log.Info("publications given to a session while it moved sent to its new connection", "client", cl.ID, "count", len(kept))
	}
}

// send puts pk in flight to cl and writes it; what the connection does
// not take is sent again when the session resumes, as mochi does.
func (h *takeoverHook) send(cl *mqtt.Client, pk packets.Packet) {
	out := pk.Copy(false)
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	if out.TopicName == "" { // named by an alias of the old connection only
		h.log.Warn("publication given to a session while it moved lost: its topic was an alias", "client", cl.ID)
		return
	}
	// Its own packet id when the new connection has none such in flight:
	// the store recorded it under that id.
	id, err := uint32(pk.PacketID), error(nil)
	if _, taken := cl.State.Inflight.Get(pk.PacketID); taken || id == 0 {
		id, err = cl.NextPacketID()
	}
	if err != nil {
		atomic.AddInt64(&h.srv.Info.InflightDropped, 1)
		h.log.Warn("publication given to a session while it moved lost", "client", cl.ID, "err", err)
		return
	}
	out.PacketID = uint16(id)
	if cl.State.Inflight.Set(out) {
		atomic.AddInt64(&h.srv.Info.Inflight, 1)
	}
	_ = cl.WritePacket(out)
}
