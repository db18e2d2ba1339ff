package console

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

const testToken = "s3cret-token"

// fakeAPI answers GET /v1/gateways and /v1/overview as the API does, and records whether
// the console's in-process call carried the token.
type fakeAPI struct{ auth string }

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.auth = r.Header.Get("Authorization")
	if r.Host != "127.0.0.1:8080" {
		http.Error(w, "foreign Host "+r.Host, http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/v1/overview" {
		_ = json.NewEncoder(w).Encode(map[string]any{"gateways": map[string]int{"total": 3, "online": 2, "offline": 1, "stale": 1}})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"count": 3, "online": 2, "stale": 1, "total": 3, "gateways": []any{}})
}

// newTestConsole returns a console over fakeAPI and the clock's pointer.
func newTestConsole(t *testing.T) (*Console, *fakeAPI, *time.Time) {
	t.Helper()
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	f := &fakeAPI{}
	c, err := New(Config{API: f, APIHost: "127.0.0.1:8080", Token: testToken, Origins: api.NewOrigins([]string{"127.0.0.1:8080"}),
		Sessions: NewSessions(func() time.Time { return now })})
	if err != nil {
		t.Fatal(err)
	}
	return c, f, &now
}

func request(method, target, body string, header map[string]string, cookie *http.Cookie) *http.Request {
	r := httptest.NewRequest(method, "http://127.0.0.1:8080"+target, strings.NewReader(body))
	if body != "" {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		r.Header.Set(k, v)
	}
	if cookie != nil {
		r.AddCookie(cookie)
	}
	return r
}

// login logs in with tok and returns the session cookie (nil if none).
func login(t *testing.T, c *Console, tok, next string) (*httptest.ResponseRecorder, *http.Cookie) {
	t.Helper()
	w := httptest.NewRecorder()
	c.ServeHTTP(w, request("POST", "/login", url.Values{"token": {tok}, "next": {next}}.Encode(), map[string]string{"Origin": "http://127.0.0.1:8080"}, nil))
	for _, ck := range w.Result().Cookies() {
		if ck.Name == CookieName && ck.Value != "" {
			return w, ck
		}
	}
	return w, nil
}

func TestLogin(t *testing.T) {
	c, f, _ := newTestConsole(t)
	w := httptest.NewRecorder()
	c.ServeHTTP(w, request("GET", "/gateways?tenant=a", "", nil, nil))
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login?next=%2Fgateways%3Ftenant%3Da" {
		t.Fatalf("a page without a session: %d to %q, want the login page", w.Code, w.Header().Get("Location"))
	}
	if w, ck := login(t, c, "wrong", "/"); ck != nil || w.Code != http.StatusUnauthorized || strings.Contains(w.Body.String(), testToken) {
		t.Fatalf("a wrong token: %d, cookie %v", w.Code, ck)
	}
	w, ck := login(t, c, testToken, "/gateways")
	if ck == nil || w.Header().Get("Location") != "/gateways" {
		t.Fatalf("login: %d to %q, cookie %v", w.Code, w.Header().Get("Location"), ck)
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || strings.Contains(ck.Value, testToken) {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, and not the token", ck)
	}
	w = httptest.NewRecorder()
	c.ServeHTTP(w, request("GET", "/", "", nil, ck))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `id="count-online">2<`) {
		t.Fatalf("overview with a session: %d\n%s", w.Code, w.Body.String())
	}
	if f.auth != "Bearer "+testToken {
		t.Errorf("the console's API call carried %q, want the token", f.auth)
	}
	if strings.Contains(w.Body.String(), testToken) {
		t.Error("a page shows the API token")
	}
	csp := w.Header().Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q: want scripts from self only and no framing", csp)
	}
}

func TestSessionCSRF(t *testing.T) {
	c, _, now := newTestConsole(t)
	_, ck := login(t, c, testToken, "/")
	csrf := c.cfg.Sessions.csrfFor(request("GET", "/", "", nil, ck))
	if csrf == "" {
		t.Fatal("no CSRF token for a live session")
	}
	for _, tt := range []struct {
		name   string
		method string
		cookie *http.Cookie
		csrf   string
		want   bool
	}{
		{"read with a session", "GET", ck, "", true},
		{"change with its CSRF token", "POST", ck, csrf, true},
		{"change without a CSRF token", "POST", ck, "", false},
		{"change with another token", "DELETE", ck, csrf + "x", false},
		{"no session", "GET", nil, "", false},
		{"a made-up session", "GET", &http.Cookie{Name: CookieName, Value: "guess"}, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.method, "/v1/commands", "", map[string]string{CSRFHeader: tt.csrf}, tt.cookie)
			if got := c.cfg.Sessions.Authorized(r); got != tt.want {
				t.Errorf("Authorized = %v, want %v", got, tt.want)
			}
		})
	}
	*now = now.Add(sessionIdle + time.Minute)
	if c.cfg.Sessions.Authorized(request("GET", "/v1/gateways", "", nil, ck)) {
		t.Error("a session idle longer than sessionIdle is still live")
	}
}

// TestForeignRequests: DNS rebinding (a foreign Host), a login posted by
// another site, and a logout without the CSRF token are refused.
func TestForeignRequests(t *testing.T) {
	c, _, _ := newTestConsole(t)
	_, ck := login(t, c, testToken, "/")
	for _, tt := range []struct {
		name string
		r    *http.Request
		want int
	}{
		{"foreign Host", func() *http.Request { r := request("GET", "/", "", nil, ck); r.Host = "evil.example:8080"; return r }(), http.StatusForbidden},
		{"login from another site", request("POST", "/login", "token="+testToken, map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, nil), http.StatusForbidden},
		{"logout without CSRF", request("POST", "/logout", "csrf=", map[string]string{"Origin": "http://127.0.0.1:8080"}, ck), http.StatusForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			c.ServeHTTP(w, tt.r)
			if w.Code != tt.want {
				t.Errorf("status %d, want %d", w.Code, tt.want)
			}
			for _, ck := range w.Result().Cookies() {
				if ck.Name == CookieName && ck.Value != "" {
					t.Errorf("a session was made: %v", ck)
				}
			}
		})
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/gateways?x=1":        "/gateways?x=1",
		"":                     "/",
		"//evil.example/x":     "/",
		"https://evil.example": "/",
		"/\\evil.example":      "/",
		"gateways":             "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSessionsFull(t *testing.T) {
	now := time.Unix(0, 0)
	s := NewSessions(func() time.Time { now = now.Add(time.Second); return now })
	first, _ := s.create()
	for range maxSessions {
		s.create()
	}
	if len(s.m) != maxSessions {
		t.Errorf("%d sessions, want at most %d", len(s.m), maxSessions)
	}
	if _, ok := s.m[first]; ok {
		t.Error("the least recently used session was kept when the store was full")
	}
}
