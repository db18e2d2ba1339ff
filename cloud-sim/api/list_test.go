package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// handlerOf is the API of c, answering to api.test with testToken.
func handlerOf(c *controller.Controller) http.Handler {
	return New(Config{Controller: c, Token: testToken, AllowedHosts: []string{"api.test"}})
}

// call sends a request to h and decodes the JSON reply into out (when
// not nil); it returns the status.
func call(tb testing.TB, h http.Handler, method, path, body string, out any) int {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, "http://api.test"+path, rd)
	req.Header.Set("Authorization", "Bearer "+testToken)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			tb.Fatalf("%s %s: %d %s: %v", method, path, rec.Code, rec.Body, err)
		}
	}
	return rec.Code
}

// birth ingests a birth of tenant/id of session at at.
func birth(c *controller.Controller, tenant, id string, session uint64, at time.Time) {
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: tenant, Gateway: id}, Message: &fleetv1.Birth{Session: session}, At: at})
}

func TestListGatewaysPage(t *testing.T) {
	c := newController(t)
	now := time.Now()
	for i := 1; i <= 12; i++ {
		birth(c, "acme", fmt.Sprintf("gw-%d", i), 1, now)
	}
	birth(c, "beta", "GW-3", 1, now)
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: "gw-2"}, Message: &fleetv1.Death{Session: 1}, At: now})
	h := handlerOf(c)
	tests := []struct {
		query                 string
		wantIDs               []string
		wantTotal, wantOnline int
		wantOffset, wantLimit int
	}{
		{"", []string{"gw-1", "gw-2", "gw-3", "gw-4", "gw-5", "gw-6", "gw-7", "gw-8", "gw-9", "gw-10", "gw-11", "gw-12", "GW-3"}, 13, 12, 0, 0},
		{"?tenant=acme&limit=3&offset=8", []string{"gw-9", "gw-10", "gw-11"}, 12, 11, 8, 3},
		{"?q=W-1", []string{"gw-1", "gw-10", "gw-11", "gw-12"}, 4, 4, 0, 0},
		{"?q=gw-3", []string{"gw-3", "GW-3"}, 2, 2, 0, 0},
		{"?offset=20", []string{}, 13, 12, 20, 0},
		{"?limit=5000&offset=12", []string{"GW-3"}, 13, 12, 12, MaxGatewayPage},
		{"?online=false", []string{"gw-2"}, 1, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			var got GatewayList
			if st := call(t, h, "GET", "/v1/gateways"+tt.query, "", &got); st != http.StatusOK {
				t.Fatalf("status %d", st)
			}
			ids := []string{}
			for _, g := range got.Gateways {
				ids = append(ids, g.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(tt.wantIDs) {
				t.Errorf("ids %v, want %v", ids, tt.wantIDs)
			}
			if got.Total != tt.wantTotal || got.Count != tt.wantTotal || got.Online != tt.wantOnline || got.Offset != tt.wantOffset || got.Limit != tt.wantLimit {
				t.Errorf("got total %d count %d online %d offset %d limit %d, want %d %d %d %d %d", got.Total, got.Count, got.Online, got.Offset, got.Limit,
					tt.wantTotal, tt.wantTotal, tt.wantOnline, tt.wantOffset, tt.wantLimit)
			}
		})
	}
	// A gateway added after a listing takes its place in the order.
	birth(c, "acme", "gw-0", 1, now)
	var got GatewayList
	call(t, h, "GET", "/v1/gateways?limit=2", "", &got)
	if len(got.Gateways) != 2 || got.Gateways[0].ID != "gw-0" || got.Total != 14 {
		t.Errorf("after a new birth: total %d, first %+v, want 14 from gw-0", got.Total, got.Gateways)
	}
	for _, q := range []string{"?limit=-1", "?offset=x"} {
		var e Error
		if st := call(t, h, "GET", "/v1/gateways"+q, "", &e); st != http.StatusBadRequest || e.Field == "" {
			t.Errorf("%s: got %d %+v, want 400 naming the field", q, st, e)
		}
	}
}

// BenchmarkListGatewaysPage: one page of 50 from the middle of 10,000
// gateways, without a selector.
func BenchmarkListGatewaysPage(b *testing.B) {
	c := newController(b)
	now := time.Now()
	for i := 1; i <= 10000; i++ {
		birth(c, "sim", fmt.Sprintf("sim-%d", i), 1, now)
	}
	h := handlerOf(c)
	var list GatewayList
	call(b, h, "GET", "/v1/gateways?limit=50&offset=5000", "", &list)
	if len(list.Gateways) != 50 || list.Gateways[0].ID != "sim-5001" {
		b.Fatalf("got %d gateways from %v", len(list.Gateways), list.Gateways[0].ID)
	}
	b.ReportAllocs()
	for b.Loop() {
		call(b, h, "GET", "/v1/gateways?limit=50&offset=5000", "", nil)
	}
}

// TestListCommands: the query is checked here; the filters are
// dispatch's (TestCommands).
func TestListCommands(t *testing.T) {
	h := handlerOf(newController(t))
	var got struct {
		Commands []*Command `json:"commands"`
	}
	if st := call(t, h, "GET", "/v1/commands?tenant=acme&state=FAILED&limit=5", "", &got); st != http.StatusOK || got.Commands == nil {
		t.Errorf("got %d %+v, want 200 and an empty list", st, got)
	}
	for _, q := range []string{"?state=failed", "?limit=no"} {
		var e Error
		if st := call(t, h, "GET", "/v1/commands"+q, "", &e); st != http.StatusBadRequest || e.Field == "" {
			t.Errorf("%s: got %d %+v, want 400 naming the field", q, st, e)
		}
	}
}

func TestGatewaySessionsAndMetrics(t *testing.T) {
	c := newController(t)
	now := time.Now()
	birth(c, "acme", "gw-1", 1, now)
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: "gw-1"},
		Message: &fleetv1.Death{Session: 1, Reason: fleetv1.Death_SHUTDOWN}, At: now})
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "acme", Gateway: "gw-1"},
		Message: &fleetv1.Birth{Session: 2, Host: &fleetv1.Host{CpuCount: 4}}, At: now})
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Metrics, Tenant: "acme", Gateway: "gw-1"},
		Message: &fleetv1.Metrics{Load1: 1.25, MemoryTotalBytes: 4, MemoryAvailableBytes: 1, RunningCount: 3}, At: now})
	h := handlerOf(c)
	var g Gateway
	call(t, h, "GET", "/v1/gateways/acme/gw-1", "", &g)
	if len(g.Sessions) != 2 || g.Sessions[0].Session != 2 || g.Sessions[1].DeathReason != "shutdown" || g.Sessions[1].DisconnectedAt.IsZero() {
		t.Errorf("sessions %+v, want 2 then 1 (shutdown)", g.Sessions)
	}
	var m Metrics
	if st := call(t, h, "GET", "/v1/gateways/acme/gw-1/metrics", "", &m); st != http.StatusOK || len(m.Samples) != 1 {
		t.Fatalf("got %d %+v, want one sample", st, m)
	}
	if s := m.Samples[0]; s.Load1 != 1.25 || s.CPUs != 4 || s.MemoryUsedPercent != 75 || s.DiskUsedPercent != 0 || s.Running != 3 {
		t.Errorf("sample %+v", s)
	}
	if st := call(t, h, "GET", "/v1/gateways/acme/gw-9/metrics", "", nil); st != http.StatusNotFound {
		t.Errorf("metrics of no gateway: %d, want 404", st)
	}
}
