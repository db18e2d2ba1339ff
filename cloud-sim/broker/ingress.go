package broker

import (
	"strings"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/protocol/topic"
)

// ingressHook counts what gateways publish for the controller's
// inventory: births, deaths (Wills included), statuses, events and
// metrics; replies and logs are not counted. It is what the replicas
// sharing ingest must apply between them, each message once.
type ingressHook struct {
	mqtt.HookBase
	prefix string // the scheme's prefix and "/"
	n      atomic.Int64
}

func newIngressHook(s topic.Scheme) *ingressHook {
	return &ingressHook{prefix: s.Prefix() + "/"}
}

func (h *ingressHook) ID() string { return "ingress-count" }

func (h *ingressHook) Provides(b byte) bool { return b == mqtt.OnPublished || b == mqtt.OnWillSent }

func (h *ingressHook) OnPublished(_ *mqtt.Client, pk packets.Packet) { h.count(pk.TopicName) }

func (h *ingressHook) OnWillSent(_ *mqtt.Client, pk packets.Packet) { h.count(pk.TopicName) }

// count counts name if it is {prefix}{tenant}/{gateway}/{kind} of a
// counted kind, or a status ({kind}/{deployment}); it does not allocate.
func (h *ingressHook) count(name string) {
	rest, ok := strings.CutPrefix(name, h.prefix)
	if !ok {
		return
	}
	_, rest, _ = strings.Cut(rest, "/") // tenant
	_, rest, _ = strings.Cut(rest, "/") // gateway
	kind, sub, nested := strings.Cut(rest, "/")
	switch topic.Kind(kind) {
	case topic.Birth, topic.Death, topic.Events, topic.Metrics:
		if !nested {
			h.n.Add(1)
		}
	case topic.Status:
		if nested && sub != "" && !strings.Contains(sub, "/") {
			h.n.Add(1)
		}
	}
}
