package changes

import (
	"fmt"
	"testing"
	"time"
)

func TestRecent(t *testing.T) {
	var h Hub
	at := time.Unix(0, 0)
	for i := range History + 5 {
		c := Change{Kind: "command.finished", At: at.Add(time.Duration(i) * time.Second), Tenant: "acme", Gateway: fmt.Sprintf("gw-%d", i%3)}
		switch i % 4 {
		case 1:
			c.Kind, c.Severity = "gateway.offline", Warning
		case 2:
			c.Kind, c.Severity = "event", Error
		case 3:
			c.Tenant = "beta"
		}
		h.Publish(c)
	}
	last := History + 4 // the index of the latest change
	tests := []struct {
		name      string
		f         Filter
		limit     int
		wantN     int
		wantFirst int // index of the first change returned
	}{
		{"all kept, newest first", Filter{}, 0, History, last},
		{"limit", Filter{}, 3, 3, last},
		{"tenant", Filter{Tenant: "beta"}, 0, History / 4, History + 3},
		{"kind by its first part", Filter{Kind: "gateway"}, 0, History / 4, History + 1},
		{"kind exactly", Filter{Kind: "gateway.offline"}, 0, History / 4, History + 1},
		{"not a part of a kind's word", Filter{Kind: "gate"}, 0, 0, 0},
		{"severity", Filter{Severities: []Severity{Error}}, 0, History / 4, History + 2},
		{"severities", Filter{Severities: []Severity{Warning, Error}}, 5, 5, History + 2},
		{"info by default", Filter{Severities: []Severity{Info}, Tenant: "acme"}, 1, 1, last},
		{"gateway", Filter{Gateway: "gw-2"}, 1, 1, History + 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := h.Recent(tt.f, tt.limit)
			if len(got) != tt.wantN {
				t.Fatalf("got %d changes, want %d", len(got), tt.wantN)
			}
			if tt.wantN == 0 {
				return
			}
			if want := at.Add(time.Duration(tt.wantFirst) * time.Second); !got[0].At.Equal(want) {
				t.Errorf("first at %v, want %v", got[0].At.Unix(), want.Unix())
			}
			for i := 1; i < len(got); i++ {
				if !got[i].At.Before(got[i-1].At) {
					t.Fatalf("not newest first at %d: %v after %v", i, got[i].At.Unix(), got[i-1].At.Unix())
				}
			}
		})
	}
}

func TestRecentBeforeFull(t *testing.T) {
	var h Hub
	if got := h.Recent(Filter{}, 0); len(got) != 0 {
		t.Errorf("empty hub: %v", got)
	}
	h.Publish(Change{Kind: "a"})
	h.Publish(Change{Kind: "b"})
	got := h.Recent(Filter{}, 0)
	if len(got) != 2 || got[0].Kind != "b" || got[1].Kind != "a" || got[0].Severity != Info {
		t.Errorf("got %+v, want b then a, info", got)
	}
}
