// Package changes fans fleet changes (a gateway came online, a command
// finished, a rollout advanced …) out to the API's event stream.
package changes

import (
	"sync"
	"time"
)

// Change is one fleet change, as the API's event stream sends it.
type Change struct {
	Kind       string    `json:"kind"` // gateway.online|offline|refused, deployment.status|removed, command.*, credential.*, event
	At         time.Time `json:"at"`
	Tenant     string    `json:"tenant,omitempty"`
	Gateway    string    `json:"gateway,omitempty"`
	Deployment string    `json:"deployment,omitempty"`
	Revision   int64     `json:"revision,omitempty"`
	Phase      string    `json:"phase,omitempty"`
	Command    string    `json:"command,omitempty"`
	Batch      string    `json:"batch,omitempty"`
	State      string    `json:"state,omitempty"`
	Message    string    `json:"message,omitempty"`
}

// Hub fans changes out to subscribers. A subscriber that does not keep up
// loses changes rather than slowing ingest; it is told so by Lagged. The
// zero Hub is ready to use.
type Hub struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{} // guarded by mu
}

// Subscription receives changes until Close.
type Subscription struct {
	C      chan Change
	h      *Hub
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

// Close ends the subscription.
func (s *Subscription) Close() {
	s.h.mu.Lock()
	delete(s.h.subs, s)
	s.h.mu.Unlock()
}

// Subscribe returns a subscription to changes with room for buffer of them.
func (h *Hub) Subscribe(buffer int) *Subscription {
	s := &Subscription{C: make(chan Change, buffer), h: h}
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[*Subscription]struct{}{}
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

// Publish sends c to every subscriber that has room for it.
func (h *Hub) Publish(c Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
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
