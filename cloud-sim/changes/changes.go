// Package changes fans fleet changes (a gateway came online, a command
// finished, a rollout advanced …) out to the API's event stream, and keeps
// the most recent ones (History) for a console to list.
package changes

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Severity says how much a change needs an operator: Info, Warning or
// Error.
type Severity string

// The severities.
const (
	Info    Severity = "info"
	Warning Severity = "warning"
	Error   Severity = "error"
)

// Change is one fleet change, as the API's event stream sends it.
type Change struct {
	Kind string    `json:"kind"` // gateway.online|offline|refused, deployment.status|removed, command.*, credential.*, event
	At   time.Time `json:"at"`
	// Severity is Info unless the publisher says otherwise: an agent
	// event's own severity, a gateway gone offline or a refusal is a
	// warning, a FAILED deployment or a failed command an error.
	Severity   Severity `json:"severity"`
	Tenant     string   `json:"tenant,omitempty"`
	Gateway    string   `json:"gateway,omitempty"`
	Deployment string   `json:"deployment,omitempty"`
	Revision   int64    `json:"revision,omitempty"`
	Phase      string   `json:"phase,omitempty"`
	Command    string   `json:"command,omitempty"`
	Batch      string   `json:"batch,omitempty"`
	State      string   `json:"state,omitempty"`
	Message    string   `json:"message,omitempty"`

	// seq numbers the changes a hub kept, from 1 (see Cursor). (A
	// Change is made for every publication applied, most of them
	// publishing none: it is kept small.)
	seq uint64
	// enc is the change in JSON, encoded once by Publish for every
	// subscriber (100 open consoles would otherwise encode it 100 times).
	enc []byte
}

// JSON returns the change in JSON.
func (c Change) JSON() []byte {
	if c.enc != nil {
		return c.enc
	}
	b, _ := json.Marshal(c) // a struct of strings and numbers: never fails
	return b
}

// Filter selects changes; an empty field selects all.
type Filter struct {
	Tenant  string
	Gateway string
	// Kind is a kind ("command.finished") or the first part of some
	// ("command" selects command.accepted and command.finished).
	Kind string
	// Severities, when set, keeps only changes of one of them.
	Severities []Severity
}

// Matches reports whether f selects c.
func (f Filter) Matches(c Change) bool {
	switch {
	case f.Tenant != "" && c.Tenant != f.Tenant:
		return false
	case f.Gateway != "" && c.Gateway != f.Gateway:
		return false
	case f.Kind != "" && c.Kind != f.Kind && !(strings.HasPrefix(c.Kind, f.Kind) && c.Kind[len(f.Kind)] == '.'):
		return false
	}
	if len(f.Severities) == 0 {
		return true
	}
	for _, s := range f.Severities {
		if c.Severity == s {
			return true
		}
	}
	return false
}

// History is how many of the latest changes a Hub keeps.
const History = 2000

// Hub fans changes out to subscribers and keeps the latest History of
// them. A subscriber that does not keep up loses changes rather than
// slowing ingest; it is told so by Lagged. The zero Hub is ready to use.
type Hub struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{} // guarded by mu
	// ring holds the latest changes, next is where the next one goes;
	// guarded by mu.
	ring []Change
	next int
	// seq is the last change's number; epoch names this hub's numbering
	// (random, set at the first use): a cursor of another hub (another
	// replica's, or this one's before a restart) is told apart. Guarded by
	// mu.
	seq   uint64
	epoch string
	// relay gets every change published here (SetRelay).
	relay atomic.Pointer[func(Change)]
}

// init sets the hub's epoch; h.mu is held.
func (h *Hub) init() {
	if h.epoch == "" {
		b := make([]byte, 6)
		rand.Read(b)
		h.epoch = hex.EncodeToString(b)
	}
}

// cursor is the place just after the change numbered seq; h.mu is held.
func (h *Hub) cursor(seq uint64) string {
	return h.epoch + "." + strconv.FormatUint(seq, 10)
}

// ParseCursor checks a cursor's form ({epoch}.{number}), as List and the
// event stream's ids give it; it says nothing of whose it is.
func ParseCursor(cursor string) (epoch string, seq uint64, err error) {
	epoch, n, ok := strings.Cut(cursor, ".")
	if ok && epoch != "" {
		if seq, err = strconv.ParseUint(n, 10, 64); err == nil {
			return epoch, seq, nil
		}
	}
	return "", 0, fmt.Errorf("%q is not a change cursor (one of GET /v1/changes' cursor or an event's id, such as 3f2a9c01b7e4.1207)", cursor)
}

// Subscription receives changes until Close.
type Subscription struct {
	C      chan Change
	h      *Hub
	epoch  string
	mu     sync.Mutex
	lagged bool // guarded by mu
}

// Lagged reports, and clears, whether changes were dropped because C was full.
func (s *Subscription) Lagged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lagged
	s.lagged = false
	return l
}

// Cursor is the place just after c, a change the subscription
// delivered: the id of its event, from which a stream resumes.
func (s *Subscription) Cursor(c Change) string {
	return s.epoch + "." + strconv.FormatUint(c.seq, 10)
}

// WriteEvent writes c as a server-sent event of kind c.Kind whose id is
// its cursor, without making the cursor a string.
func (s *Subscription) WriteEvent(w io.Writer, c Change) error {
	_, err := fmt.Fprintf(w, "event: %s\nid: %s.%d\ndata: %s\n\n", c.Kind, s.epoch, c.seq, c.JSON())
	return err
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.h.mu.Lock()
	delete(s.h.subs, s)
	s.h.mu.Unlock()
}

// Subscribe returns a subscription to changes with room for buffer of them.
func (h *Hub) Subscribe(buffer int) *Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subscribe(buffer)
}

// subscribe is Subscribe; h.mu is held.
func (h *Hub) subscribe(buffer int) *Subscription {
	h.init()
	s := &Subscription{C: make(chan Change, buffer), h: h, epoch: h.epoch}
	if h.subs == nil {
		h.subs = map[*Subscription]struct{}{}
	}
	h.subs[s] = struct{}{}
	return s
}

// SubscribeAfter is Subscribe resumed at cursor (from List, or the id of
// the last event a stream delivered): it returns with the subscription
// the changes kept since, oldest first, which the subscription does not
// repeat. gap reports that some of what came since is not known: it is
// no longer kept (more than History since), or cursor is another hub's
// (another replica's, or this one's before a restart), and then nothing
// is returned for it.
func (h *Hub) SubscribeAfter(cursor string, buffer int) (s *Subscription, since []Change, gap bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s = h.subscribe(buffer)
	epoch, after, err := ParseCursor(cursor)
	if err != nil || epoch != h.epoch || after > h.seq {
		return s, nil, true
	}
	kept := uint64(len(h.ring))
	if oldest := h.seq - kept + 1; after+1 < oldest {
		gap, after = true, oldest-1
	}
	for n := after + 1; n <= h.seq; n++ {
		since = append(since, h.ring[(uint64(h.next)+History-(h.seq-n)-1)%History])
	}
	return s, since, gap
}

// SetRelay has every change published from now on also handed to relay
// (for the other controller replicas' hubs); relay must not block.
func (h *Hub) SetRelay(relay func(Change)) { h.relay.Store(&relay) }

// Publish keeps c, sends it to every subscriber that has room for it and
// hands it to the relay, if any; a c without a severity is Info.
func (h *Hub) Publish(c Change) {
	if c.Severity == "" {
		c.Severity = Info
	}
	h.Deliver(c)
	if r := h.relay.Load(); r != nil {
		c.enc = nil
		(*r)(c)
	}
}

// Deliver keeps c and sends it to every subscriber, without relaying it:
// a change another replica published.
func (h *Hub) Deliver(c Change) {
	if c.Severity == "" {
		c.Severity = Info
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.init()
	h.seq++
	c.seq = h.seq
	if len(h.ring) < History {
		h.ring = append(h.ring, c)
	} else {
		h.ring[h.next] = c
	}
	h.next = (h.next + 1) % History
	if len(h.subs) > 0 {
		c.enc = c.JSON()
	}
	for s := range h.subs {
		select {
		case s.C <- c:
		default:
			s.mu.Lock()
			s.lagged = true
			s.mu.Unlock()
		}
	}
}

// Recent returns the latest changes f selects, newest first, at most
// limit of them (all that are kept when limit is 0).
func (h *Hub) Recent(f Filter, limit int) []Change {
	out, _ := h.List(f, limit)
	return out
}

// List is Recent with a cursor just after the newest change of the hub
// when the list was taken: a client that lists and then streams from the
// cursor (SubscribeAfter) sees every change once.
func (h *Hub) List(f Filter, limit int) ([]Change, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.init()
	return h.recent(f, limit), h.cursor(h.seq)
}

// recent is Recent; h.mu is held.
func (h *Hub) recent(f Filter, limit int) []Change {
	out := []Change{}
	for i := range len(h.ring) {
		c := h.ring[(h.next-1-i+History)%History] // newest first
		if !f.Matches(c) {
			continue
		}
		if out = append(out, c); limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}
