package broker

import (
	"hash/fnv"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// shareHook hands each publication to a shared-subscription group's
// member chosen by its publisher (rendezvous hashing of the publisher's
// client id with each member's): one gateway's publications all go to one
// controller replica, in order, so that two replicas seldom write one
// gateway's record at once; the gateways spread evenly over the members,
// and a member leaving moves only its own gateways. mochi's own choice is
// the first member a map yields, which gave one of two replicas 71 % of a
// fleet.
type shareHook struct{ mqtt.HookBase }

func (h *shareHook) ID() string { return "share-by-publisher" }

func (h *shareHook) Provides(b byte) bool { return b == mqtt.OnSelectSubscribers }

func (h *shareHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if len(subs.Shared) == 0 {
		return subs
	}
	subs.SharedSelected = make(map[string]packets.Subscription, len(subs.Shared))
	for _, members := range subs.Shared {
		var chosen string
		var best uint64
		for id := range members {
			if w := weight(pk.Origin, id); chosen == "" || w > best || (w == best && id < chosen) {
				chosen, best = id, w
			}
		}
		sub := members[chosen]
		if cur, ok := subs.SharedSelected[chosen]; ok {
			sub = cur.Merge(sub)
		}
		subs.SharedSelected[chosen] = sub
	}
	return subs
}

// weight is member's weight for publisher (rendezvous hashing): FNV-1a
// of each, mixed (splitmix64's finalizer), since FNV's last bytes barely
// reach its high bits and member names differ in their last.
func weight(publisher, member string) uint64 {
	return mix(fnv64(publisher) ^ mix(fnv64(member)))
}

func fnv64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
