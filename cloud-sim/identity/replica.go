package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// Watch keeps the identities current with the changes other controller
// replicas make in the store (a gateway provisioned, given a new
// password or other groups, or deprovisioned through another replica's
// API), until stop is called. For each change it calls changed with the
// identity before and after (nil when there was none, or is none now), so
// that the replica serving the broker can end the sessions the change
// invalidates. It returns once the stored identities are read.
func (c *Identities) Watch(ctx context.Context, changed func(before, after *Device)) (stop func(), err error) {
	return c.cfg.Store.Watch(ctx, state.Devices, func(e state.Entry) {
		var after *Device
		name, ok := usernameOf(e.Key)
		if !e.Deleted {
			d := new(Device)
			if json.Unmarshal(e.Value, d) != nil {
				return
			}
			after, name, ok = d, d.Tenant+"/"+d.ID, true
		}
		if !ok {
			return
		}
		c.mu.Lock()
		before := c.devices[name]
		if after == nil {
			delete(c.devices, name)
		} else {
			c.devices[name] = after
		}
		c.mu.Unlock()
		if changed != nil && differs(before, after) {
			changed(before, after)
		}
	})
}

// usernameOf is the "tenant/id" of a Devices key (state.Key(tenant, id)).
func usernameOf(key string) (string, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil {
		return "", false
	}
	tenant, id, ok := strings.Cut(string(raw), "\x00")
	return tenant + "/" + id, ok
}

// differs reports whether a change from before to after ends the
// gateway's sessions: it was deprovisioned, or its password or groups
// changed.
func differs(before, after *Device) bool {
	switch {
	case before == nil && after == nil:
		return false
	case before == nil || after == nil:
		return true
	}
	return before.Hash != after.Hash || !slices.Equal(before.Groups, after.Groups)
}
