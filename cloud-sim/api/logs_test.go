package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// logsCloud is an embedded broker (without identities), a controller
// connected to it whose inventory holds acme/gw-1 online and acme/gw-off
// offline, its API on a real listener, and acme/gw-1 played by a
// LogsGateway whose deployment web wrote l1…l10.
func logsCloud(t *testing.T) (*httptest.Server, *mqttclienttest.LogsGateway) {
	return logsReplicas(t, 1, "")
}

// logsReplicas is logsCloud with n controller replicas sharing one store
// and the broker, ingest shared in group share (each replica alone when
// empty, as --solo-ingest); the API served is the last replica's.
func logsReplicas(t *testing.T, n int, share string) (*httptest.Server, *mqttclienttest.LogsGateway) {
	t.Helper()
	b, err := broker.Start(broker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "k"), filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("mqtt://" + b.Addr())
	var c *controller.Controller
	for i := range n {
		c, err = controller.New(context.Background(), controller.Config{Store: st, Keys: keys, BrokerURL: u, Scheme: topic.Default(),
			ID: fmt.Sprintf("controller-%d", i), Share: share})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
		err = c.Start(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		now := time.Now()
		birth(c, "acme", "gw-1", 1, now)
		birth(c, "acme", "gw-off", 1, now)
		c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: "gw-off"}, Message: &fleetv1.Death{Session: 1}, At: now})
	}
	lines := make([]string, 10)
	for i := range lines {
		lines[i] = fmt.Sprintf("l%d", i+1)
	}
	gw := mqttclienttest.StartLogsGateway(t, "mqtt://"+b.Addr(), "", &mqttclienttest.LogsGateway{Tenant: "acme", ID: "gw-1", Lines: map[string][]string{"web": lines}})
	srv := httptest.NewUnstartedServer(nil)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	srv.Config.Handler = New(Config{Controller: c, Token: testToken, AllowedHosts: []string{fmt.Sprintf("127.0.0.1:%d", port)}})
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, gw
}

// sseEvent is one server-sent event.
type sseEvent struct{ name, data string }

// openLogs GETs path and returns the response; the caller closes it.
func openLogs(ctx context.Context, t *testing.T, srv *httptest.Server, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// readEvents reads events from an SSE body until the end event, or
// until stop says so.
func readEvents(t *testing.T, sc *bufio.Scanner, stop func(sseEvent) bool) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		case line == "" && cur.name != "":
			out = append(out, cur)
			if cur.name == "end" || stop != nil && stop(cur) {
				return out
			}
			cur = sseEvent{}
		}
	}
	t.Fatalf("stream ended without an end event after %v: %v", out, sc.Err())
	return nil
}

// texts renders events as a line's text, "dropped", or "end REASON CODE".
func texts(t *testing.T, evs []sseEvent) []string {
	var out []string
	for _, ev := range evs {
		switch ev.name {
		case "line":
			var l LogLine
			if err := json.Unmarshal([]byte(ev.data), &l); err != nil || l.At.IsZero() || l.Service != "web" || (l.Stream != "stdout" && l.Stream != "stderr") {
				t.Errorf("line %s: %+v, %v", ev.data, l, err)
			}
			out = append(out, l.Text)
		case "end":
			var e LogEnd
			if err := json.Unmarshal([]byte(ev.data), &e); err != nil || e.Command == "" {
				t.Errorf("end %s: %v", ev.data, err)
			}
			out = append(out, strings.TrimSpace("end "+e.Reason+" "+e.Code))
		default:
			out = append(out, ev.name)
		}
	}
	return out
}

// TestLogsSSE: GET …/logs streams a gateway's chunks as server-sent
// events in sequence order, though the gateway sent them out of order and
// some twice, and ends with the gateway's end.
func TestLogsSSE(t *testing.T) {
	srv, _ := logsCloud(t)
	tests := []struct {
		name, query string
		want        []string
	}{
		{"tail", "?tail=5", []string{"l6", "l7", "l8", "l9", "l10", "end COMPLETE"}},
		{"default tail", "", []string{"l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "end COMPLETE"}},
		{"follow until", "?tail=1&follow=true&until=300ms", nil}, // checked below: l10, follow lines, end UNTIL
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := openLogs(context.Background(), t, srv, "/v1/gateways/acme/gw-1/deployments/web/logs"+tt.query)
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			got := texts(t, readEvents(t, bufio.NewScanner(resp.Body), nil))
			if tt.want == nil {
				if len(got) < 2 || got[0] != "l10" || got[len(got)-1] != "end UNTIL" || len(got) > 2 && !strings.HasPrefix(got[1], "follow ") {
					t.Errorf("got %q, want l10, follow lines, end UNTIL", got)
				}
				return
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("no such deployment", func(t *testing.T) {
		resp := openLogs(context.Background(), t, srv, "/v1/gateways/acme/gw-1/deployments/db/logs")
		defer resp.Body.Close()
		got := texts(t, readEvents(t, bufio.NewScanner(resp.Body), nil))
		if want := []string{"end REJECTED NOT_FOUND"}; !slices.Equal(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})
}

// TestLogsClientGone: a client that goes away from a follow ends it on
// the gateway: the server sends cancel-logs naming the logs command.
func TestLogsClientGone(t *testing.T) {
	srv, gw := logsCloud(t)
	ctx, cancel := context.WithCancel(context.Background())
	resp := openLogs(ctx, t, srv, "/v1/gateways/acme/gw-1/deployments/web/logs?follow=true&tail=2")
	id := resp.Header.Get("X-Fleet-Command")
	got := texts(t, readEvents(t, bufio.NewScanner(resp.Body), func(ev sseEvent) bool { return strings.Contains(ev.data, "follow 3") }))
	if !slices.Equal(got[:2], []string{"l9", "l10"}) {
		t.Errorf("got %q, want l9, l10 first", got)
	}
	if gw.Following() != 1 {
		t.Fatalf("the gateway follows %d streams, want 1", gw.Following())
	}
	cancel() // Ctrl-C
	resp.Body.Close()
	testenv.Eventually(t, "cancel-logs of "+id+" at the gateway", func() bool {
		for _, cmd := range gw.Commands() {
			if cmd.GetCancelLogs().GetRequestId() == id {
				return true
			}
		}
		return false
	})
	if gw.Following() != 0 {
		t.Errorf("the gateway still follows %d streams", gw.Following())
	}
}

// TestLogsRefused: bad query values are refused naming the parameter,
// before anything is sent; an unknown gateway is 404, an offline one 409;
// a logs command to more than one gateway is refused naming target.
func TestLogsRefused(t *testing.T) {
	srv, gw := logsCloud(t)
	tests := []struct {
		name, path string
		wantStatus int
		wantField  string
	}{
		{"tail not a number", "/v1/gateways/acme/gw-1/deployments/web/logs?tail=ten", 400, "tail"},
		{"tail too large", "/v1/gateways/acme/gw-1/deployments/web/logs?tail=100001", 400, "tail"},
		{"since not a time", "/v1/gateways/acme/gw-1/deployments/web/logs?since=yesterday", 400, "since"},
		{"until not a time", "/v1/gateways/acme/gw-1/deployments/web/logs?follow=true&until=later", 400, "until"},
		{"until without follow", "/v1/gateways/acme/gw-1/deployments/web/logs?until=5m", 400, "until"},
		{"until in the past", "/v1/gateways/acme/gw-1/deployments/web/logs?follow=true&until=2020-01-01T00:00:00Z", 400, "until"},
		{"follow not a bool", "/v1/gateways/acme/gw-1/deployments/web/logs?follow=maybe", 400, "follow"},
		{"bad service", "/v1/gateways/acme/gw-1/deployments/web/logs?service=a%2Bb", 400, "service"},
		{"no such gateway", "/v1/gateways/acme/gw-9/deployments/web/logs", 404, "id"},
		{"offline gateway", "/v1/gateways/acme/gw-off/deployments/web/logs", 409, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := openLogs(context.Background(), t, srv, tt.path)
			defer resp.Body.Close()
			var body Error
			json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != tt.wantStatus || body.Field != tt.wantField {
				t.Errorf("got %d %+v, want %d naming %q", resp.StatusCode, body, tt.wantStatus, tt.wantField)
			}
		})
	}
	for _, target := range []string{`{"tenant": "acme", "group": "berlin"}`, `{"tenant": "acme", "selector": "site=a"}`, `{"tenant": "acme", "gateways": ["gw-1", "gw-off"]}`} {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/commands", strings.NewReader(`{"target": `+target+`, "command": {"logs": {"deployment": "web"}}}`))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body Error
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 400 || body.Field != "target" {
			t.Errorf("logs to %s: got %d %+v, want 400 naming target", target, resp.StatusCode, body)
		}
	}
	if n := len(gw.Commands()); n != 0 {
		t.Errorf("the gateway got %d commands", n)
	}
}

// TestLogsReplicas: with several controller replicas, sharing ingest or
// each receiving everything (--solo-ingest), the chunks and the replies
// reach the replica that asked, each once, in order.
func TestLogsReplicas(t *testing.T) {
	for name, share := range map[string]string{"shared ingest": "fleet-controllers", "solo ingest": ""} {
		t.Run(name, func(t *testing.T) {
			srv, _ := logsReplicas(t, 3, share)
			for range 3 {
				resp := openLogs(context.Background(), t, srv, "/v1/gateways/acme/gw-1/deployments/web/logs?tail=4")
				got := texts(t, readEvents(t, bufio.NewScanner(resp.Body), nil))
				resp.Body.Close()
				if want := []string{"l7", "l8", "l9", "l10", "end COMPLETE"}; !slices.Equal(got, want) {
					t.Errorf("got %q, want %q", got, want)
				}
			}
		})
	}
}
