package broker

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/protocol/topic"
)

// Identity is who a client authenticated as: a gateway, confined to its
// own topics and its groups' command topics, or the controller, which may
// use every topic.
type Identity struct {
	Tenant     string
	Gateway    string
	Groups     []string
	Controller bool
}

// Authenticator checks a client's CONNECT credentials, and tells the
// identity behind a session the broker restored from its store (messages
// are queued for it before it reconnects): its client id, and the
// username it authenticated with when the session began, which the store
// keeps with the session.
type Authenticator interface {
	Authenticate(clientID, username string, password []byte) (Identity, error)
	Identify(clientID, username string) (Identity, bool)
}

// Allowed reports whether id may publish on (write) or subscribe to or
// receive from (!write) name, a topic or a subscription filter, under
// scheme. A gateway may:
//
//	write {prefix}/{tenant}/{gateway}/birth|death|reply|events|metrics
//	write {prefix}/{tenant}/{gateway}/reply/{console}
//	write {prefix}/{tenant}/{gateway}/status/{deployment}
//	write {prefix}/{tenant}/{gateway}/logs/{request id}
//	read  {prefix}/{tenant}/{gateway}/cmd/{verb or +}
//	read  {prefix}/{tenant}/group/{group}/cmd/{verb or +}, for its groups
//
// and nothing else; the same patterns mosquitto.conf gives Mosquitto, and
// dynsec.ACLs its dynamic security plugin (dynsec's TestACLsMirrorEmbedded
// fails when the two differ).
func (id Identity) Allowed(scheme topic.Scheme, name string, write bool) bool {
	if id.Controller {
		return true
	}
	rest, ok := strings.CutPrefix(name, scheme.Prefix()+"/")
	if !ok {
		return false
	}
	l := strings.Split(rest, "/")
	if len(l) < 3 || l[0] != id.Tenant || slices.ContainsFunc(l, func(s string) bool { return s == "#" }) {
		return false
	}
	if write {
		if l[1] != id.Gateway || slices.Contains(l, "+") {
			return false
		}
		switch {
		case len(l) == 3:
			return slices.Contains([]string{"birth", "death", "reply", "events", "metrics"}, l[2])
		case len(l) == 4:
			return l[2] == "reply" || l[2] == "status" || l[2] == string(topic.LogStream)
		}
		return false
	}
	if len(l) == 4 && l[1] == id.Gateway && l[2] == "cmd" {
		return true
	}
	return len(l) == 5 && l[1] == topic.ReservedGateway && slices.Contains(id.Groups, l[2]) && l[3] == "cmd"
}

// aclHook authenticates CONNECTs and enforces Identity.Allowed.
type aclHook struct {
	mqtt.HookBase
	auth   Authenticator
	scheme topic.Scheme

	// ids holds the identity of every client id that authenticated. It is
	// kept after a disconnect: the ACL is also checked when a message is
	// queued for an offline session.
	mu  sync.Mutex
	ids map[string]Identity
}

func (h *aclHook) ID() string { return "fleet-acl" }

func (h *aclHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *aclHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	id, err := h.auth.Authenticate(cl.ID, string(pk.Connect.Username), pk.Connect.Password)
	if err != nil {
		h.Log.Info("connection refused", "client", cl.ID, "username", string(pk.Connect.Username), "err", err)
		return false
	}
	// A Will is published by the broker, past the ACL check of PUBLISH: a
	// gateway may only leave a death on its own topics.
	if pk.Connect.WillFlag && !id.Allowed(h.scheme, pk.Connect.WillTopic, true) {
		h.Log.Warn("connection refused: Will on a topic the client may not publish on", "client", cl.ID, "topic", pk.Connect.WillTopic)
		return false
	}
	h.mu.Lock()
	h.ids[cl.ID] = id
	h.mu.Unlock()
	if q, ok := cl.Net.Conn.(*queuedConn); ok && id.Controller {
		q.raise(ControllerMaxQueuedBytes)
		// A message that finds the controller's outbound channel full
		// (one goroutine drains each client's short channel, and thousands
		// of gateways publishing at once outrun it on a busy machine) is
		// written to it at once, to its write queue (which waits for the
		// network only past ControllerMaxQueuedBytes), and a reply or an
		// event stays in flight until the controller acknowledges it. mochi drops it otherwise, and takes it out of
		// flight. A gateway's dropped message stays dropped: its queue
		// can wait for the network, and the publisher with it.
		cl.State.WriteWhenFull.Store(true)
	}
	return true
}

// forget drops the identity client id authenticated with.
func (h *aclHook) forget(clientID string) {
	h.mu.Lock()
	delete(h.ids, clientID)
	h.mu.Unlock()
}

func (h *aclHook) OnACLCheck(cl *mqtt.Client, name string, write bool) bool {
	h.mu.Lock()
	id, ok := h.ids[cl.ID]
	h.mu.Unlock()
	if !ok {
		if id, ok = h.auth.Identify(cl.ID, string(cl.Properties.Username)); !ok {
			return false
		}
	}
	if !id.Allowed(h.scheme, name, write) {
		h.Log.Info("denied by ACL", "client", cl.ID, "topic", name, "write", write)
		return false
	}
	return true
}

// ErrDenied is what an Authenticator returns for bad credentials.
var ErrDenied = errors.New("bad username or password")
