package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestGuard: what the guard refuses before any handler runs, and what it
// lets through (the CLI, curl, the console on the same origin).
// fakeSessions has one live console session, cookie s=live, whose CSRF
// token is "c".
type fakeSessions struct{}

func (fakeSessions) Authorized(r *http.Request) bool {
	ck, err := r.Cookie("s")
	if err != nil || ck.Value != "live" {
		return false
	}
	return r.Method == "GET" || r.Header.Get("X-CSRF-Token") == "c"
}

func TestGuard(t *testing.T) {
	const self = "127.0.0.1:8080"
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	g := newGuard(Config{Token: testToken, AllowedHosts: []string{self, "localhost:8080", "fleet.example.com", "console.example.com:8443"}, Sessions: fakeSessions{}}, ok)
	bearer := "Bearer " + testToken
	tests := []struct {
		name, method, path, body string
		host                     string // self when empty
		header                   map[string]string
		want                     int
		wantField                string
	}{
		{name: "CLI GET", method: "GET", path: "/v1/gateways", header: map[string]string{"Authorization": bearer}, want: 200},
		{name: "CLI POST with JSON", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "application/json"}, want: 200},
		{name: "JSON with a charset", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "application/json; charset=utf-8"}, want: 200},
		{name: "POST without a body needs no Content-Type", method: "POST", path: "/v1/rollouts/r-1/pause", header: map[string]string{"Authorization": bearer}, want: 200},
		{name: "no token", method: "GET", path: "/v1/gateways", want: 401, wantField: "Authorization"},
		{name: "wrong token", method: "GET", path: "/v1/gateways", header: map[string]string{"Authorization": "Bearer nope"}, want: 401, wantField: "Authorization"},
		{name: "token without Bearer", method: "GET", path: "/v1/gateways", header: map[string]string{"Authorization": testToken}, want: 401, wantField: "Authorization"},
		{name: "healthz without token", method: "GET", path: "/healthz", want: 200},
		{name: "text/plain POST", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "text/plain"}, want: 415, wantField: "Content-Type"},
		{name: "form POST", method: "POST", path: "/v1/commands", body: "a=1", header: map[string]string{"Authorization": bearer, "Content-Type": "application/x-www-form-urlencoded"}, want: 415, wantField: "Content-Type"},
		{name: "body without Content-Type", method: "PUT", path: "/v1/tenants/acme/credentials", body: "{}", header: map[string]string{"Authorization": bearer}, want: 415, wantField: "Content-Type"},
		{name: "foreign Host (DNS rebinding)", method: "GET", path: "/v1/gateways", host: "evil.example:8080", header: map[string]string{"Authorization": bearer}, want: 403, wantField: "Host"},
		{name: "foreign Host without port", method: "GET", path: "/v1/gateways", host: "evil.example", header: map[string]string{"Authorization": bearer}, want: 403, wantField: "Host"},
		{name: "loopback name on another port", method: "GET", path: "/v1/gateways", host: "localhost:9999", header: map[string]string{"Authorization": bearer}, want: 403, wantField: "Host"},
		{name: "healthz to a foreign Host", method: "GET", path: "/healthz", host: "evil.example:8080", want: 403, wantField: "Host"},
		{name: "loopback name", method: "GET", path: "/v1/gateways", host: "LOCALHOST:8080", header: map[string]string{"Authorization": bearer}, want: 200},
		{name: "allowed host on any port", method: "GET", path: "/v1/gateways", host: "fleet.example.com:443", header: map[string]string{"Authorization": bearer}, want: 200},
		{name: "allowed host without port", method: "GET", path: "/v1/gateways", host: "fleet.example.com", header: map[string]string{"Authorization": bearer}, want: 200},
		{name: "allowed host:port on another port", method: "GET", path: "/v1/gateways", host: "console.example.com:9443", header: map[string]string{"Authorization": bearer}, want: 403, wantField: "Host"},
		{name: "Origin evil.example", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "application/json", "Origin": "http://evil.example"}, want: 403, wantField: "Origin"},
		{name: "Origin null (sandboxed page)", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "application/json", "Origin": "null"}, want: 403, wantField: "Origin"},
		{name: "Origin on another port", method: "GET", path: "/v1/gateways", header: map[string]string{"Authorization": bearer, "Origin": "http://127.0.0.1:3000"}, want: 403, wantField: "Origin"},
		{name: "Sec-Fetch-Site cross-site", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, want: 403, wantField: "Origin"},
		{name: "Sec-Fetch-Site same-site", method: "GET", path: "/v1/gateways", header: map[string]string{"Authorization": bearer, "Sec-Fetch-Site": "same-site"}, want: 403, wantField: "Origin"},
		{name: "cross-site without a token", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, want: 403, wantField: "Origin"},
		{name: "same-origin console", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Authorization": bearer, "Content-Type": "application/json", "Origin": "http://" + self, "Sec-Fetch-Site": "same-origin"}, want: 200},
		{name: "same-origin console behind an allowed name", method: "GET", path: "/v1/gateways", host: "console.example.com:8443", header: map[string]string{"Authorization": bearer, "Origin": "https://console.example.com:8443", "Sec-Fetch-Site": "same-origin"}, want: 200},
		{name: "typed into the address bar", method: "GET", path: "/healthz", header: map[string]string{"Sec-Fetch-Site": "none"}, want: 200},
		{name: "console session reads", method: "GET", path: "/v1/gateways", header: map[string]string{"Cookie": "s=live", "Sec-Fetch-Site": "same-origin"}, want: 200},
		{name: "console session changes with its CSRF token", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Cookie": "s=live", "X-CSRF-Token": "c", "Content-Type": "application/json", "Origin": "http://" + self}, want: 200},
		{name: "console session changes without a CSRF token", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Cookie": "s=live", "Content-Type": "application/json", "Origin": "http://" + self}, want: 401, wantField: "Authorization"},
		{name: "console session with a wrong bearer", method: "GET", path: "/v1/gateways", header: map[string]string{"Cookie": "s=live", "Authorization": "Bearer nope"}, want: 401, wantField: "Authorization"},
		{name: "console session cookie sent by another site", method: "POST", path: "/v1/commands", body: "{}", header: map[string]string{"Cookie": "s=live", "X-CSRF-Token": "c", "Content-Type": "application/json", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, want: 403, wantField: "Origin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body *strings.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req := httptest.NewRequest(tt.method, "http://"+self+tt.path, nil)
			if body != nil {
				req = httptest.NewRequest(tt.method, "http://"+self+tt.path, body)
			}
			if tt.host != "" {
				req.Host = tt.host
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			g.ServeHTTP(rec, req)
			var e Error
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code != tt.want || e.Field != tt.wantField {
				t.Errorf("got %d field %q (%s), want %d field %q", rec.Code, e.Field, e.Error, tt.want, tt.wantField)
			}
			if strings.Contains(rec.Body.String(), testToken) {
				t.Errorf("the answer shows the token: %s", rec.Body.String())
			}
		})
	}
}

// TestGuardWithoutToken: with no token configured every request is
// refused, unless InsecureNoAuth lets all through; with no allowed hosts,
// every Host is refused.
func TestGuardWithoutToken(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	tests := []struct {
		name   string
		cfg    Config
		header string
		want   int
	}{
		{"no token configured, none sent", Config{AllowedHosts: []string{"example.com"}}, "", 401},
		{"no token configured, an empty one sent", Config{AllowedHosts: []string{"example.com"}}, "Bearer ", 401},
		{"insecure no auth", Config{InsecureNoAuth: true, AllowedHosts: []string{"example.com"}}, "", 200},
		{"no allowed hosts", Config{InsecureNoAuth: true}, "", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://example.com/v1/gateways", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			rec := httptest.NewRecorder()
			newGuard(tt.cfg, ok).ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("got %d, want %d", rec.Code, tt.want)
			}
		})
	}
}

// openStream opens GET /v1/events and returns the response, or the error
// status; the stream is closed at cleanup.
func openStream(t *testing.T, srv *httptest.Server) (*http.Response, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp, cancel
}

// TestEventStreamCap: beyond MaxStreams concurrent event streams the API
// answers 503 naming the flag; a closed stream frees its slot.
func TestEventStreamCap(t *testing.T) {
	srv, _ := newAPI(t, Config{MaxStreams: 2}, nil)
	var cancels []context.CancelFunc
	for range 2 {
		resp, cancel := openStream(t, srv)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream within the cap: got %d, want 200", resp.StatusCode)
		}
		cancels = append(cancels, cancel)
	}
	resp, _ := openStream(t, srv)
	var e Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(e.Error, "--api-max-streams") {
		t.Fatalf("stream beyond the cap: got %d %q, want 503 naming --api-max-streams", resp.StatusCode, e.Error)
	}
	cancels[0]()
	testenv.Eventually(t, "a stream again once one closed", func() bool {
		resp, cancel := openStream(t, srv)
		defer cancel()
		return resp.StatusCode == http.StatusOK
	})
}

// TestEventStreamOutlivesTimeouts: an event stream goes on delivering
// after the server's read and write timeouts have passed.
func TestEventStreamOutlivesTimeouts(t *testing.T) {
	const timeout = 50 * time.Millisecond
	srv, c := newAPI(t, Config{}, func(s *http.Server) { s.ReadTimeout, s.WriteTimeout = timeout, timeout })
	resp, _ := openStream(t, srv)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: got %d", resp.StatusCode)
	}
	opened := time.Now()
	var lateEvent atomic.Bool
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "event: ") && time.Since(opened) > 4*timeout {
				lateEvent.Store(true)
			}
		}
	}()
	session := uint64(1)
	testenv.Eventually(t, "an event after the timeouts passed", func() bool {
		session++ // a new session of gw-1: a change on the stream
		c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "acme", Gateway: "gw-1"}, Message: &fleetv1.Birth{Session: session}, At: time.Now()})
		return lateEvent.Load()
	})
}

// TestHandlerOutlivesReadTimeout: the server's ReadTimeout bounds reading
// the request, not the handler: its context is not canceled when the
// timeout passes, with a body or without.
func TestHandlerOutlivesReadTimeout(t *testing.T) {
	const timeout = 50 * time.Millisecond
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			w.WriteHeader(http.StatusInternalServerError)
		case <-release:
			w.WriteHeader(http.StatusOK)
		}
	})
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = newGuard(Config{Token: testToken, AllowedHosts: []string{srv.Listener.Addr().String()}}, h)
	srv.Config.ReadTimeout = timeout
	srv.Start()
	defer srv.Close()
	type result struct {
		status int
		err    error
	}
	results := make(chan result, 2)
	for _, body := range []string{"", `{"a": 1}`} {
		go func() {
			req, _ := http.NewRequest("POST", srv.URL+"/v1/x", strings.NewReader(body))
			if body == "" {
				req.Body, req.ContentLength = nil, 0
			}
			req.Header.Set("Authorization", "Bearer "+testToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				results <- result{err: err}
				return
			}
			resp.Body.Close()
			results <- result{status: resp.StatusCode}
		}()
	}
	start := time.Now()
	testenv.Eventually(t, "the read timeout passed", func() bool { return time.Since(start) > 4*timeout })
	close(release)
	for range 2 {
		if r := <-results; r.err != nil || r.status != http.StatusOK {
			t.Errorf("got %d %v, want 200: the handler's context was canceled", r.status, r.err)
		}
	}
}
