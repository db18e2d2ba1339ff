package dispatch

import (
	"slices"
	"strings"
)

// Filter selects commands; an empty field selects all.
type Filter struct {
	Tenant, Gateway, Verb, Batch string
	State                        State
	Code                         string
}

func (f Filter) matches(c *Command) bool {
	return (f.Tenant == "" || c.Tenant == f.Tenant) && (f.Gateway == "" || c.Gateway == f.Gateway) &&
		(f.Verb == "" || c.Verb == f.Verb) && (f.Batch == "" || c.Batch == f.Batch) &&
		(f.State == "" || c.State == f.State) && (f.Code == "" || c.Code == f.Code)
}

// Commands lists the commands f selects, newest sent first (then by id),
// at most limit of them (all when 0). It scans every record the
// dispatcher keeps (finished ones until Prune) and sorts the matches
// outside the lock: a record's id and sending time never change.
func (d *Dispatcher) Commands(f Filter, limit int) []*Command {
	d.mu.Lock()
	recs := make([]*record, 0, min(len(d.commands), 1024))
	for _, rec := range d.commands {
		if f.matches(&rec.Command) {
			recs = append(recs, rec)
		}
	}
	d.mu.Unlock()
	slices.SortFunc(recs, func(a, b *record) int {
		if c := b.SentAt.Compare(a.SentAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	if limit > 0 && len(recs) > limit {
		recs = recs[:limit]
	}
	out := make([]*Command, len(recs))
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, rec := range recs {
		c := rec.Command
		out[i] = &c
	}
	return out
}
