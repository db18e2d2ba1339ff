package broker

import (
	"bytes"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainGuard keeps mochi from reading a topic's retained message while it
// is being replaced. mochi v2.7.9 (the latest release) writes a topic's
// particle.retainPath in TopicsIndex.RetainMessage under the index's locks,
// but reads it in TopicsIndex.scanMessages, which finds the retained
// messages for a new wildcard subscription, under none: a data race
// between any retained PUBLISH (or retained Will) and any SUBSCRIBE with
// '+' or '#' (mochi-mqtt/server#200, closed in 2025 without a fix). A
// gateway's retained birth and the controller's or console's subscription
// meet there after every broker restart. A torn read of the string could
// even crash the broker.
//
// The guard is a read-write lock taken around both sides from the hooks
// mochi calls: a retained PUBLISH holds it exclusively from OnPublish to
// OnRetainMessage (RetainMessage runs between them, under mochi's own index
// lock that already serialises retained writes); a SUBSCRIBE holds it shared
// from sending its SUBACK (OnPacketSent) until the packet is processed
// (OnPacketProcessed), which covers the scan and the queueing of the
// retained messages to the subscriber. OnPacketProcessed, and OnWillSent
// for a Will, release whatever is still held, so every path out of mochi's
// processing releases the lock. It must be the last hook added, so that
// its OnPublish runs only when every other hook accepted the packet.
//
// Not covered: a Will with a delay interval (mochi retains it later from
// its event loop, with no hook before), $SYS topics (never scanned for
// wildcard subscriptions), and the inline client (not enabled). No client
// of this project uses them.
type retainGuard struct {
	mqtt.HookBase
	mu sync.RWMutex

	heldMu sync.Mutex
	held   map[*mqtt.Client]bool // guarded by heldMu; client → holds mu exclusively (true) or shared (false)
}

func newRetainGuard() *retainGuard { return &retainGuard{held: map[*mqtt.Client]bool{}} }

func (g *retainGuard) ID() string { return "retain-guard" }

func (g *retainGuard) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublish, mqtt.OnWill, mqtt.OnRetainMessage, mqtt.OnWillSent,
		mqtt.OnPacketSent, mqtt.OnPacketProcessed}, []byte{b})
}

func (g *retainGuard) lock(cl *mqtt.Client) {
	g.mu.Lock()
	g.heldMu.Lock()
	g.held[cl] = true
	g.heldMu.Unlock()
}

func (g *retainGuard) rlock(cl *mqtt.Client) {
	g.mu.RLock()
	g.heldMu.Lock()
	g.held[cl] = false
	g.heldMu.Unlock()
}

// release unlocks what cl holds, if anything.
func (g *retainGuard) release(cl *mqtt.Client) {
	g.heldMu.Lock()
	exclusive, ok := g.held[cl]
	delete(g.held, cl)
	g.heldMu.Unlock()
	switch {
	case !ok:
	case exclusive:
		g.mu.Unlock()
	default:
		g.mu.RUnlock()
	}
}

func (g *retainGuard) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Retain {
		g.lock(cl)
	}
	return pk, nil
}

func (g *retainGuard) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain && cl.Properties.Will.WillDelayInterval == 0 {
		g.lock(cl)
	}
	return will, nil
}

func (g *retainGuard) OnRetainMessage(cl *mqtt.Client, _ packets.Packet, _ int64) { g.release(cl) }

func (g *retainGuard) OnWillSent(cl *mqtt.Client, _ packets.Packet) { g.release(cl) }

func (g *retainGuard) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Suback {
		g.rlock(cl)
	}
}

func (g *retainGuard) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type == packets.Subscribe || pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Retain {
		g.release(cl)
	}
}
