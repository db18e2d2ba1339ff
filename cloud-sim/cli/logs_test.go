package cli

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// fakeLogs answers GET /v1/gateways/acme/gw-1/deployments/web/logs with
// events, recording the query it got.
type fakeLogs struct {
	events string
	status int
	query  chan string
}

func (f *fakeLogs) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/gateways/acme/gw-1/deployments/web/logs" {
		http.NotFound(w, r)
		return
	}
	f.query <- r.URL.RawQuery
	if f.status != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		fmt.Fprint(w, `{"error": "since: \"yesterday\": give a duration like 10m", "field": "since", "code": "INVALID_ARGUMENT"}`)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fmt.Fprint(w, ": logs command c-1\n\n"+f.events)
}

const (
	line1   = "event: line\ndata: {\"at\":\"2026-12-01T10:00:00.5Z\",\"service\":\"web\",\"stream\":\"stdout\",\"text\":\"hello\"}\n\n"
	line2   = "event: line\ndata: {\"at\":\"2026-12-01T10:00:01Z\",\"service\":\"db\",\"stream\":\"stderr\",\"text\":\"ready to accept connections\"}\n\n"
	dropped = "event: dropped\ndata: {\"by\":\"gateway\",\"lines\":3,\"bytes\":120}\n\n"
)

func end(reason, code, msg string) string {
	return fmt.Sprintf("event: end\ndata: {\"command\":\"c-1\",\"reason\":%q,\"code\":%q,\"message\":%q}\n\n", reason, code, msg)
}

// TestLogsVerb: lines print as `timestamp [service] stream text`, a drop
// notice goes to stderr, an end in error fails the verb, and the flags
// become the API's query.
func TestLogsVerb(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		api        *fakeLogs
		wantQuery  string
		wantCode   int
		wantOut    string
		wantErrHas string
	}{
		{"tail", []string{"acme/gw-1", "web", "--tail", "2"}, &fakeLogs{events: line1 + line2 + end("COMPLETE", "", "")}, "tail=2", 0,
			"2026-12-01T10:00:00.5Z [web] stdout hello\n2026-12-01T10:00:01Z [db] stderr ready to accept connections\n", ""},
		{"dropped lines", []string{"acme/gw-1", "web", "-f", "--since", "10m", "--service", "web", "--until", "1m"}, &fakeLogs{events: line1 + dropped + end("UNTIL", "", "")},
			"follow=true&service=web&since=10m&until=1m", 0, "2026-12-01T10:00:00.5Z [web] stdout hello\n", "3 lines (120 bytes) dropped here by the gateway's rate limit"},
		{"no such deployment", []string{"acme/gw-1", "web"}, &fakeLogs{events: end("REJECTED", "NOT_FOUND", "no deployment web")}, "", 1,
			"", "ended REJECTED: NOT_FOUND: no deployment web"},
		{"container gone", []string{"acme/gw-1", "web", "-f"}, &fakeLogs{events: line1 + end("CONTAINER_GONE", "", "")}, "follow=true", 0,
			"2026-12-01T10:00:00.5Z [web] stdout hello\n", "removed or replaced"},
		{"refused by the API", []string{"acme/gw-1", "web", "--since", "yesterday"}, &fakeLogs{status: 400}, "since=yesterday", 1, "", "since"},
		{"cut off", []string{"acme/gw-1", "web"}, &fakeLogs{events: line1}, "", 1, "2026-12-01T10:00:00.5Z [web] stdout hello\n", "without its end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.api.query = make(chan string, 1)
			code, out, errs := run(t, tt.api, append([]string{"logs"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(errs, tt.wantErrHas) {
				t.Errorf("exit %d, stderr %q; want %d with %q", code, errs, tt.wantCode, tt.wantErrHas)
			}
			if diff := cmp.Diff(tt.wantOut, out); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if q := <-tt.api.query; q != tt.wantQuery {
				t.Errorf("query %q, want %q", q, tt.wantQuery)
			}
		})
	}
}

func TestLogsVerbUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"logs", "acme/gw-1"}, "give the gateway as TENANT/ID and the deployment's name"},
		{[]string{"logs", "gw-1", "web"}, "write TENANT/ID"},
		{[]string{"logs", "acme/gw-1", "web", "--until", "5m"}, "--until applies to -f only"},
		{[]string{"logs", "acme/gw-1", "web", "--tail", "-1"}, "invalid argument"},
	} {
		code, _, errs := run(t, nil, tt.args...)
		if code != ExitUsage || !strings.Contains(errs, tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d with %q", tt.args, code, errs, ExitUsage, tt.want)
		}
	}
}

// TestLogsVerbInterrupted: Ctrl-C (the context's end) ends a follow
// quietly and closes the request, which the API takes as the client
// going away (and cancels the follow on the gateway).
func TestLogsVerbInterrupted(t *testing.T) {
	gone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, line1)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(gone)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errs bytes.Buffer
	stdout := &syncWriter{w: &out, line: make(chan struct{}, 1)}
	env := Env{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: &errs, Getenv: func(k string) string {
		if k == "CLOUD_SIM_TOKEN" {
			return "t0ken"
		}
		return ""
	}}
	done := make(chan int, 1)
	go func() { done <- Run(ctx, env, []string{"logs", "--api", srv.URL, "acme/gw-1", "web", "-f"}) }()
	timeout := time.NewTimer(testenv.Timeout)
	defer timeout.Stop()
	select {
	case <-stdout.line: // the first line printed
	case code := <-done:
		t.Fatalf("exit %d before Ctrl-C, stderr %q", code, errs.String())
	case <-timeout.C:
		t.Fatal("no line printed")
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK {
			t.Errorf("exit %d after Ctrl-C, stderr %q; want 0", code, errs.String())
		}
	case <-timeout.C:
		t.Fatal("still running after Ctrl-C")
	}
	testenv.Eventually(t, "the API sees the client gone", func() bool {
		select {
		case <-gone:
			return true
		default:
			return false
		}
	})
}

// syncWriter signals each write.
type syncWriter struct {
	w    *bytes.Buffer
	line chan struct{}
}

func (s *syncWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	select {
	case s.line <- struct{}{}:
	default:
	}
	return n, err
}
