package changes

import (
	"fmt"
	"slices"
	"strings"
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

// TestSubscribeAfter: a subscription resumed at a cursor gets the changes
// kept since, oldest first, then the new ones; a gap is reported when
// some since are not kept any more or the cursor is not this hub's.
func TestSubscribeAfter(t *testing.T) {
	publish := func(h *Hub, from, n int) {
		for i := from; i < from+n; i++ {
			h.Publish(Change{Kind: "event", Message: fmt.Sprint(i)})
		}
	}
	messages := func(cs []Change) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Message)
		}
		return strings.Join(out, " ")
	}
	var other Hub
	_, otherCursor := other.List(Filter{}, 1)
	tests := []struct {
		name      string
		before    int // changes published before the list
		between   int // and between the list and the subscription
		cursor    func(listed string) string
		wantSince string // "kept": every change the hub keeps
		wantGap   bool
	}{
		{"what came since the list", 3, 2, func(c string) string { return c }, "3 4", false},
		{"nothing since", 3, 0, func(c string) string { return c }, "", false},
		{"an empty hub's cursor", 0, 2, func(c string) string { return c }, "0 1", false},
		{"more than kept since: what is kept, and the gap", 1, History + 2, func(c string) string { return c }, "kept", true},
		{"another hub's cursor", 3, 2, func(string) string { return otherCursor }, "", true},
		{"a cursor ahead of the hub (its own before a restart)", 3, 2, func(c string) string {
			epoch, _, _ := ParseCursor(c)
			return epoch + ".99"
		}, "", true},
		{"not a cursor", 3, 2, func(string) string { return "yesterday" }, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Hub
			publish(&h, 0, tt.before)
			_, listed := h.List(Filter{}, 0)
			publish(&h, tt.before, tt.between)
			sub, since, gap := h.SubscribeAfter(tt.cursor(listed), 4)
			defer sub.Close()
			if gap != tt.wantGap {
				t.Errorf("gap %v, want %v", gap, tt.wantGap)
			}
			want := tt.wantSince
			if want == "kept" {
				want = messages(h.kept())
			}
			if got := messages(since); got != want {
				t.Errorf("since %q, want %q", got, want)
			}
			// Then the new ones, not one of those again; each names the
			// cursor that resumes after it.
			publish(&h, 1_000_000, 1)
			c := <-sub.C
			if c.Message != "1000000" {
				t.Errorf("next change %q, want the new one", c.Message)
			}
			_, after, _ := h.SubscribeAfter(sub.Cursor(c), 1)
			if len(after) != 0 {
				t.Errorf("resumed after the newest change: %d since, want none", len(after))
			}
		})
	}
}

// kept is every change h keeps, oldest first.
func (h *Hub) kept() []Change {
	out := h.Recent(Filter{}, 0)
	slices.Reverse(out)
	return out
}
