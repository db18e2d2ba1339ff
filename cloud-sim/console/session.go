package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// CookieName is the console's session cookie.
const CookieName = "fleet_console"

// CSRFHeader carries the session's CSRF token on the console's API calls.
const CSRFHeader = "X-CSRF-Token"

// Session lifetimes: a session ends after idle without a request, and at
// the latest after max.
const (
	sessionIdle = 12 * time.Hour
	sessionMax  = 7 * 24 * time.Hour
	maxSessions = 1024
)

// Sessions holds the console's browser sessions, in memory: a restart
// of serve logs every browser out. A session is made by logging in with
// the API token; the browser holds only a random id in an HttpOnly,
// SameSite=Strict cookie, never the token. It implements api.Sessions.
type Sessions struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*session // by id; guarded by mu
}

type session struct {
	csrf             string
	created, touched time.Time
}

// NewSessions returns an empty session store; now is the clock (time.Now
// when nil).
func NewSessions(now func() time.Time) *Sessions {
	if now == nil {
		now = time.Now
	}
	return &Sessions{now: now, m: map[string]*session{}}
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session and returns its id and CSRF token. When the
// store is full the least recently used session ends.
func (s *Sessions) create() (id, csrf string) {
	now := s.now()
	id, csrf = randomToken(), randomToken()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= maxSessions {
		var oldest string
		for k, v := range s.m {
			if oldest == "" || v.touched.Before(s.m[oldest].touched) {
				oldest = k
			}
		}
		delete(s.m, oldest)
	}
	s.m[id] = &session{csrf: csrf, created: now, touched: now}
	return id, csrf
}

// lookup returns the live session r's cookie names, touching it.
func (s *Sessions) lookup(r *http.Request) (*session, string, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil || c.Value == "" {
		return nil, "", false
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.m[c.Value]
	if !ok {
		return nil, "", false
	}
	if now.Sub(se.touched) > sessionIdle || now.Sub(se.created) > sessionMax {
		delete(s.m, c.Value)
		return nil, "", false
	}
	se.touched = now
	return se, c.Value, true
}

// end ends the session r's cookie names.
func (s *Sessions) end(r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		s.mu.Lock()
		delete(s.m, c.Value)
		s.mu.Unlock()
	}
}

// csrfFor returns the CSRF token of r's session, or "".
func (s *Sessions) csrfFor(r *http.Request) string {
	se, _, ok := s.lookup(r)
	if !ok {
		return ""
	}
	return se.csrf
}

// Authorized reports whether r carries a live session and, unless it
// only reads (GET, HEAD), the session's CSRF token in X-CSRF-Token.
func (s *Sessions) Authorized(r *http.Request) bool {
	se, _, ok := s.lookup(r)
	if !ok {
		return false
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	return validCSRF(se.csrf, r.Header.Get(CSRFHeader))
}

func validCSRF(want, got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}
