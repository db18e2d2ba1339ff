// Package console is the operators' web console, served by cloud-sim
// serve on the API's listener: server-rendered pages (html/template) and
// a little plain JavaScript (EventSource for live updates, fetch for
// actions), all embedded, nothing from a CDN. It is a client of the HTTP
// API like the CLI: pages are rendered from API replies (fetched
// in-process through apiclient), and actions are API calls the browser
// makes with its session cookie and CSRF token. It adds no second path
// into the controller.
package console

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures the console.
type Config struct {
	// API is the API's handler (api.New, with its guard); the console
	// calls it in-process, as apiclient does over the network.
	API http.Handler
	// APIHost is the Host the in-process calls carry: the listen
	// address, which the API's guard allows.
	APIHost string
	// Token is the API token: the login page asks for it; the console's
	// own API calls carry it. Empty with NoAuth.
	Token string
	// NoAuth (cloud-sim serve --api-insecure-no-auth, tests only): no
	// login.
	NoAuth bool
	// Origins are the names of this listener; requests to others, and
	// form posts from other origins, are refused.
	Origins  *api.Origins
	Sessions *Sessions
	Logger   *slog.Logger
	Now      func() time.Time
}

// Console serves the pages.
type Console struct {
	cfg   Config
	api   *apiclient.Client
	pages map[string]*template.Template
	mux   *http.ServeMux
	log   *slog.Logger
}

// New parses the templates and returns the console.
func New(cfg Config) (*Console, error) {
	if cfg.API == nil || cfg.APIHost == "" || cfg.Origins == nil || cfg.Sessions == nil {
		return nil, errors.New("console: API, APIHost, Origins and Sessions are required")
	}
	if cfg.Token == "" && !cfg.NoAuth {
		return nil, errors.New("console: an API token is required (or NoAuth)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Console{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(),
		api: &apiclient.Client{Base: "http://" + cfg.APIHost, Token: cfg.Token, HTTP: &http.Client{Transport: inProcess{cfg.API}}}}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /login", c.loginPage)
	c.mux.HandleFunc("POST /login", c.login)
	c.mux.HandleFunc("POST /logout", c.logout)
	c.mux.HandleFunc("POST /rollouts/create", c.rolloutCreate)
	for _, p := range pages() {
		c.mux.Handle("GET "+p.path, c.authed(p.handle))
	}
	c.mux.HandleFunc("POST /deploy/check", c.deployCheck)
	c.mux.HandleFunc("POST /deploy/send", c.deploySend)
	c.mux.Handle("GET /", c.authed((*Console).notFound))
	return c, nil
}

// page is one console page: its path pattern and its handler, which
// renders a template of templates/.
type page struct {
	path   string
	handle func(*Console, http.ResponseWriter, *http.Request)
}

// pages lists the console's pages. Each page's file adds its own entry.
func pages() []page {
	return []page{
		{path: "/{$}", handle: (*Console).overview},
		{path: "/gateways", handle: (*Console).gateways},
		{path: "/gateways/{tenant}/{id}", handle: (*Console).gateway},
		{path: "/events", handle: (*Console).events},
		{path: "/deploy", handle: (*Console).deploy},
		{path: "/commands", handle: (*Console).commands},
		{path: "/credentials", handle: (*Console).credentials},
		{path: "/rollouts", handle: (*Console).rollouts},
		{path: "/rollouts/new", handle: (*Console).rolloutNew},
		{path: "/rollouts/{id}", handle: (*Console).rollout},
	}
}

// inProcess serves a request with the API handler in this process.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := newRecorder()
	r = r.Clone(r.Context())
	r.RemoteAddr, r.RequestURI = "127.0.0.1:0", r.URL.RequestURI()
	t.h.ServeHTTP(rec, r)
	return rec.response(r), nil
}

// ServeHTTP serves the console's pages, refusing foreign Hosts and, for
// anything but GET, cross-origin requests; every response carries the
// console's security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	if !c.cfg.Origins.AllowedHost(r.Host) {
		http.Error(w, "Host "+r.Host+" is not this console's: add the name you use with cloud-sim serve --api-allowed-host", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if msg := c.cfg.Origins.CrossOrigin(r); msg != "" {
			http.Error(w, msg, http.StatusForbidden)
			return
		}
	}
	c.mux.ServeHTTP(w, r)
}

// authed runs h for a logged-in browser, and sends others to the login
// page.
func (c *Console) authed(h func(*Console, http.ResponseWriter, *http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.cfg.NoAuth {
			if _, _, ok := c.cfg.Sessions.lookup(r); !ok {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
		}
		h(c, w, r)
	})
}

// view is what every page template gets.
type view struct {
	Title string
	Nav   string // the nav entry to mark current
	CSRF  string
	// Live lists the event kinds (prefixes) after which the page's
	// content is fetched again; empty: the page is not live.
	Live   string
	NoAuth bool
	Error  string
	Data   any
}

// fragmentHeader asks for a page's content only, as console.js does to
// refresh a live page.
const fragmentHeader = "X-Console-Fragment"

// render writes page name with v. A request with X-Console-Fragment gets
// only the page's "content" template.
func (c *Console) render(w http.ResponseWriter, r *http.Request, name string, v view) {
	t, ok := c.pages[name]
	if !ok {
		http.Error(w, "no page "+name, http.StatusInternalServerError)
		return
	}
	v.CSRF, v.NoAuth = c.cfg.Sessions.csrfFor(r), c.cfg.NoAuth
	which := "layout"
	if r.Header.Get(fragmentHeader) != "" {
		which = "content"
	}
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, which, v); err != nil {
		c.log.Error("console: render", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b.Bytes())
}

// fail renders err on the page's layout: an API error keeps its field and
// code.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, title string, err error) {
	status := http.StatusBadGateway
	if e, ok := errors.AsType[*apiclient.APIError](err); ok {
		status = e.Status
	}
	w.WriteHeader(status)
	c.render(w, r, "error", view{Title: title, Error: err.Error()})
}

func (c *Console) notFound(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusNotFound)
	c.render(w, r, "error", view{Title: "Not found", Error: "The console has no page " + r.URL.Path + "."})
}

// get calls the API with GET.
func (c *Console) get(ctx context.Context, path string, out any) error {
	return c.api.Do(ctx, http.MethodGet, path, nil, out, nil)
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if c.cfg.NoAuth {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.render(w, r, "login", view{Title: "Log in", Nav: "login", Data: safeNext(r.URL.Query().Get("next"))})
}

// login checks the token a login form posts and starts a session.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if c.cfg.NoAuth {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	if subtle.ConstantTimeCompare([]byte(tok), []byte(c.cfg.Token)) != 1 {
		c.log.Warn("console: login with a wrong token", "remote", r.RemoteAddr)
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, r, "login", view{Title: "Log in", Nav: "login", Error: "That is not the API token. It is in the file api-token of cloud-sim serve's --data directory (or the file --api-token-file names).", Data: next})
		return
	}
	id, _ := c.cfg.Sessions.create()
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: int(sessionMax / time.Second)})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout ends the session; it needs the session's CSRF token.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if !validCSRF(c.cfg.Sessions.csrfFor(r), r.PostFormValue("csrf")) {
		http.Error(w, "logout needs the page's CSRF token: reload the page and log out again", http.StatusForbidden)
		return
	}
	c.cfg.Sessions.end(r)
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext keeps a post-login destination on this console: a path, never
// another host ("//evil", "https://…", "/\evil").
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}

// parsePages parses layout.html with each page's template.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" || strings.HasPrefix(name, "_") {
			continue
		}
		t, err := template.New(name).Funcs(funcs()).ParseFS(templateFS, "templates/layout.html", "templates/_*.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}
