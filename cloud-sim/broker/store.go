package broker

import (
	"strconv"
	"strings"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
)

// boltStore is mochi's bbolt storage hook with one repair: the hook does not
// save the packet id of a queued message (mochi v2.7.9), so after a restart
// the broker could not resend what it queued for an offline client and
// dropped the client's connection on every attempt. The id is part of the
// stored message's key ("…:{packet id}"), and is restored from there.
type boltStore struct {
	*bolt.Hook
}

func (h boltStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := h.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		if _, id, ok := cutLast(msgs[i].ID, ":"); ok {
			if n, err := strconv.ParseUint(id, 10, 16); err == nil {
				msgs[i].PacketID = uint16(n)
			}
		}
	}
	return msgs, err
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
