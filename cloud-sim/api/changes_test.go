package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// ingestSome gives c, in this order: gw-1 and gw-2 born, gw-1 reports its
// deployment web FAILED, gw-2 an agent warning, then dies.
func ingestSome(c *controller.Controller, at time.Time) {
	birth(c, "acme", "gw-1", 1, at)
	birth(c, "acme", "gw-2", 1, at)
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Status, Tenant: "acme", Gateway: "gw-1", Deployment: "web"},
		Message: &fleetv1.DeploymentStatus{Revision: 1, Phase: fleetv1.DeploymentStatus_FAILED, Message: "pull failed"}, At: at})
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Events, Tenant: "acme", Gateway: "gw-2"},
		Message: &fleetv1.Event{Severity: fleetv1.Event_WARNING, Kind: "pull.offline-fallback", Message: "used the local image"}, At: at})
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: "gw-2"}, Message: &fleetv1.Death{Session: 1}, At: at})
}

func TestListChanges(t *testing.T) {
	c := newController(t)
	ingestSome(c, time.Now())
	h := handlerOf(c)
	tests := []struct {
		query string
		want  []string // kind/gateway/severity, newest first
	}{
		{"", []string{"gateway.offline/gw-2/warning", "event/gw-2/warning", "deployment.status/gw-1/error", "gateway.online/gw-2/info", "gateway.online/gw-1/info"}},
		{"?limit=2", []string{"gateway.offline/gw-2/warning", "event/gw-2/warning"}},
		{"?gateway=gw-1", []string{"deployment.status/gw-1/error", "gateway.online/gw-1/info"}},
		{"?kind=gateway", []string{"gateway.offline/gw-2/warning", "gateway.online/gw-2/info", "gateway.online/gw-1/info"}},
		{"?kind=gateway.online&tenant=acme", []string{"gateway.online/gw-2/info", "gateway.online/gw-1/info"}},
		{"?severity=warning,error", []string{"gateway.offline/gw-2/warning", "event/gw-2/warning", "deployment.status/gw-1/error"}},
		{"?tenant=beta", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			var got struct {
				Changes []changes.Change `json:"changes"`
			}
			if st := call(t, h, "GET", "/v1/changes"+tt.query, "", &got); st != http.StatusOK {
				t.Fatalf("status %d", st)
			}
			list := []string{}
			for _, ch := range got.Changes {
				list = append(list, ch.Kind+"/"+ch.Gateway+"/"+string(ch.Severity))
			}
			if strings.Join(list, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got %v\nwant %v", list, tt.want)
			}
		})
	}
	for _, q := range []string{"?severity=fatal", "?limit=x"} {
		var e Error
		if st := call(t, h, "GET", "/v1/changes"+q, "", &e); st != http.StatusBadRequest || e.Field == "" {
			t.Errorf("%s: got %d %+v, want 400 naming the field", q, st, e)
		}
	}
}

// TestEventsFiltered: the event stream sends only the changes its query
// selects.
func TestEventsFiltered(t *testing.T) {
	srv, c := newAPI(t, Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/events?gateway=gw-2&severity=warning", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rd := bufio.NewReader(resp.Body)
	if _, err := rd.ReadString('\n'); err != nil { // the stream's opening comment, sent once subscribed
		t.Fatal(err)
	}
	ingestSome(c, time.Now())
	var got []string
	for len(got) < 2 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var ch changes.Change
			if err := json.Unmarshal([]byte(data), &ch); err != nil {
				t.Fatal(err)
			}
			got = append(got, ch.Kind+"/"+ch.Gateway+"/"+string(ch.Severity))
		}
	}
	if want := "event/gw-2/warning gateway.offline/gw-2/warning"; strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	var e Error
	if st := call(t, handlerOf(c), "GET", "/v1/events?severity=nope", "", &e); st != http.StatusBadRequest || e.Field != "severity" {
		t.Errorf("bad severity: got %d %+v, want 400 naming severity", st, e)
	}
}

// TestEventsResume: a stream opened with after= (GET /v1/changes' cursor)
// sends first the changes made since the list, then the new ones, each
// with its cursor as the event's id; one resumed with Last-Event-ID (what
// a reconnecting EventSource sends) starts after that event. A malformed
// after is refused naming it.
func TestEventsResume(t *testing.T) {
	srv, c := newAPI(t, Config{}, nil)
	h := handlerOf(c)
	birth(c, "acme", "gw-1", 1, time.Now())
	var l ChangeList
	if st := call(t, h, "GET", "/v1/changes", "", &l); st != http.StatusOK || l.Cursor == "" {
		t.Fatalf("list: %d, cursor %q", st, l.Cursor)
	}
	birth(c, "acme", "gw-2", 1, time.Now()) // after the list, before the stream

	type event struct{ id, what string }
	open := func(t *testing.T, query, lastID string, n int) []event {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/events"+query, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rd := bufio.NewReader(resp.Body)
		var got []event
		var id string
		for len(got) < n {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("after %v: %v", got, err)
			}
			if v, ok := strings.CutPrefix(line, "id: "); ok {
				id = strings.TrimSpace(v)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var ch changes.Change
				if err := json.Unmarshal([]byte(data), &ch); err != nil {
					t.Fatal(err)
				}
				got = append(got, event{id, ch.Kind + "/" + ch.Gateway})
				if len(got) == 1 {
					birth(c, "acme", "gw-3", 1, time.Now()) // once the stream is open
				}
			}
		}
		return got
	}
	got := open(t, "?after="+l.Cursor, "", 2)
	if got[0].what != "gateway.online/gw-2" || got[1].what != "gateway.online/gw-3" {
		t.Fatalf("events %v, want gw-2's online (made after the list), then gw-3's", got)
	}
	if got[0].id == "" || got[0].id == got[1].id {
		t.Fatalf("event ids %q and %q, want two cursors", got[0].id, got[1].id)
	}
	// Resumed after gw-2's event, whatever after says: gw-3's comes first.
	if again := open(t, "?after="+l.Cursor, got[0].id, 1); again[0].what != "gateway.online/gw-3" {
		t.Errorf("resumed after %s: %v, want gw-3's online first", got[0].id, again)
	}

	var e Error
	if st := call(t, h, "GET", "/v1/events?after=yesterday", "", &e); st != http.StatusBadRequest || e.Field != "after" {
		t.Errorf("bad after: got %d %+v, want 400 naming after", st, e)
	}
}
