package api

import (
	"crypto/subtle"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// TokenFile is the name of the API token file serve creates in its data
// directory when it is given no token, and where the CLI looks for it.
const TokenFile = "api-token"

// DefaultMaxStreams caps concurrent event streams when Config.MaxStreams is 0.
const DefaultMaxStreams = 64

// guard refuses, before any handler runs, what a web page or a process
// without the token sends: a foreign Host (DNS rebinding), a cross-origin
// request (Origin, Sec-Fetch-Site), a missing or wrong token, and a body
// that is not JSON (a form or text/plain POST needs no CORS preflight).
type guard struct {
	*Origins
	token    []byte // "Bearer <token>"; nil: no authentication
	noAuth   bool
	sessions Sessions
	next     http.Handler
}

// Sessions lets a browser session of the web console, which holds no
// token, through the guard: Authorized reports whether r carries a live
// session and, unless it is a GET or HEAD, its CSRF token.
type Sessions interface {
	Authorized(r *http.Request) bool
}

// Origins knows the names (Host values, and Origins' hosts) that name
// this listener; the API and the console refuse the others.
type Origins struct {
	// hosts holds allowed host:port values, anyPort hosts allowed on any
	// port; both lower case.
	hosts, anyPort map[string]bool
}

// NewOrigins returns the Origins of allowed: "host:port", or "host" for
// any port.
func NewOrigins(allowed []string) *Origins {
	o := &Origins{hosts: map[string]bool{}, anyPort: map[string]bool{}}
	for _, h := range allowed {
		h = strings.ToLower(h)
		if _, _, err := net.SplitHostPort(h); err == nil {
			o.hosts[h] = true
		} else {
			o.anyPort[strings.Trim(h, "[]")] = true
		}
	}
	return o
}

func newGuard(cfg Config, next http.Handler) *guard {
	g := &guard{Origins: NewOrigins(cfg.AllowedHosts), noAuth: cfg.InsecureNoAuth, sessions: cfg.Sessions, next: next}
	if cfg.Token != "" {
		g.token = []byte("Bearer " + cfg.Token)
	}
	return g
}

const (
	hostHelp  = "the API answers only requests to its listen address (127.0.0.1, localhost or [::1] with its port on a loopback listen); add the name clients use with cloud-sim serve --api-allowed-host"
	tokenHelp = "send the API token as Authorization: Bearer <token>; cloud-sim serve made it in the file api-token of its --data directory (or reads --api-token-file); the CLI reads --api-token-file, CLOUD_SIM_TOKEN, or --data"
)

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.AllowedHost(r.Host) {
		writeJSON(w, http.StatusForbidden, Error{Error: "Host " + quote(r.Host) + " is not allowed: " + hostHelp, Field: "Host", Code: "PERMISSION_DENIED"})
		return
	}
	if msg := g.CrossOrigin(r); msg != "" {
		writeJSON(w, http.StatusForbidden, Error{Error: msg, Field: "Origin", Code: "PERMISSION_DENIED"})
		return
	}
	if !g.authorized(r) {
		writeJSON(w, http.StatusUnauthorized, Error{Error: tokenHelp, Field: "Authorization", Code: "UNAUTHENTICATED"})
		return
	}
	if hasBody(r) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			writeJSON(w, http.StatusUnsupportedMediaType, Error{Error: "Content-Type " + quote(r.Header.Get("Content-Type")) + ": send a body as Content-Type: application/json", Field: "Content-Type", Code: "INVALID_ARGUMENT"})
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

func quote(s string) string { return `"` + s + `"` }

func hasBody(r *http.Request) bool {
	return r.ContentLength != 0 || len(r.TransferEncoding) > 0
}

func (g *guard) authorized(r *http.Request) bool {
	if g.noAuth || r.URL.Path == "/healthz" {
		return true
	}
	if g.token != nil && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), g.token) == 1 {
		return true
	}
	return g.sessions != nil && r.Header.Get("Authorization") == "" && g.sessions.Authorized(r)
}

// AllowedHost reports whether hostport (a Host header, or an Origin's
// host with its port made explicit) names this listener.
func (g *Origins) AllowedHost(hostport string) bool {
	hostport = strings.ToLower(hostport)
	host, _, err := net.SplitHostPort(hostport)
	if err != nil { // no port: http's
		host, hostport = strings.Trim(hostport, "[]"), net.JoinHostPort(strings.Trim(hostport, "[]"), "80")
	}
	return g.hosts[hostport] || g.anyPort[host]
}

// CrossOrigin says why r comes from another site or origin, or "". A
// same-origin request (the console served on this listener) and one
// without browser headers (the CLI, curl) pass.
func (g *Origins) CrossOrigin(r *http.Request) string {
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "cross-site", "same-site":
		return "Sec-Fetch-Site " + site + ": the API refuses requests from other web sites"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "Origin " + quote(origin) + ": the API refuses requests from other web pages"
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	if !g.AllowedHost(host) {
		return "Origin " + quote(origin) + " is not this API's: the API refuses requests from other web pages (an origin the API serves is allowed with cloud-sim serve --api-allowed-host)"
	}
	return ""
}

// streams bounds the concurrent event streams.
type streams chan struct{}

// acquire takes a slot, or reports false when all are taken.
func (s streams) acquire() bool {
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s streams) release() { <-s }

// holdFor lets the handler outlive the server's WriteTimeout: for d and
// a minute to answer, or without a deadline when d is 0 (an event
// stream). A wait for outcomes is bounded by MaxWait. (ReadTimeout bounds
// reading the request only: net/http clears the read deadline once the
// body is read.)
func holdFor(w http.ResponseWriter, d time.Duration) {
	var deadline time.Time
	if d > 0 {
		deadline = time.Now().Add(d + time.Minute)
	}
	_ = http.NewResponseController(w).SetWriteDeadline(deadline)
}
