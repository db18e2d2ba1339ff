package console

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

var t0 = time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)

func at(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }

func gw(id, state string, dispatched, finished float64) api.RolloutGateway {
	g := api.RolloutGateway{Gateway: id, State: state}
	if dispatched >= 0 {
		g.DispatchedAt = at(dispatched)
	}
	if finished >= 0 {
		g.FinishedAt = at(finished)
	}
	return g
}

func TestOutcomeAt(t *testing.T) {
	first := at(1)
	tests := []struct {
		name string
		g    api.RolloutGateway
		t    float64
		want outcome
	}{
		{"queued", gw("a", api.GwQueued, -1, -1), 5, outQueued},
		{"before its dispatch", gw("a", api.GwSucceeded, 2, 4), 1, outQueued},
		{"between dispatch and finish", gw("a", api.GwSucceeded, 2, 4), 3, outInProgress},
		{"at its finish", gw("a", api.GwSucceeded, 2, 4), 4, outSucceeded},
		{"failed after", gw("a", api.GwFailed, 2, 4), 9, outFailed},
		{"rejected counts as failed", gw("a", api.GwRejected, 2, 4), 9, outFailed},
		{"timed out in the queue: queued before", gw("a", api.GwTimedOut, -1, 4), 3, outQueued},
		{"timed out in the queue: failed after", gw("a", api.GwTimedOut, -1, 4), 5, outFailed},
		{"still in progress", gw("a", api.GwInProgress, 2, -1), 50, outInProgress},
		{"canceled: queued until canceled", gw("a", api.GwCanceled, -1, 6), 5, outQueued},
		{"canceled after", gw("a", api.GwCanceled, -1, 6), 7, outCanceled},
		{"rolled back: queued before the first dispatch", gw("a", api.GwRolledBack, 6, 8), 0.5, outQueued},
		{"rolled back: in progress until the rollback", gw("a", api.GwRolledBack, 6, 8), 3, outInProgress},
		{"rolled back: from the rollback", gw("a", api.GwRolledBack, 6, 8), 7, outRolledBack},
		{"rolling back", gw("a", api.GwRollingBack, 6, -1), 7, outRolledBack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := outcomeAt(tt.g, at(tt.t), first); got != tt.want {
				t.Errorf("outcomeAt(%s at %vs) = %s, want %s", tt.g.State, tt.t, outcomes[got].name, outcomes[tt.want].name)
			}
		})
	}
}

func TestSeries(t *testing.T) {
	gws := []api.RolloutGateway{
		gw("a", api.GwSucceeded, 0, 2),
		gw("b", api.GwFailed, 2, 4),
		gw("c", api.GwQueued, -1, -1),
		gw("d", api.GwRolledBack, 3, 4),
	}
	got := series(gws, at(0), at(4), 4)
	want := [][numOutcomes]int{
		{outInProgress: 2, outQueued: 2},                  // 0 s: a dispatched; d counted from the first dispatch
		{outInProgress: 2, outQueued: 2},                  // 1 s
		{outSucceeded: 1, outInProgress: 2, outQueued: 1}, // 2 s: a done, b dispatched
		{outSucceeded: 1, outInProgress: 1, outRolledBack: 1, outQueued: 1},
		{outSucceeded: 1, outFailed: 1, outRolledBack: 1, outQueued: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d samples, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sample %d: got %v, want %v", i, got[i], want[i])
		}
	}
	for i, s := range got {
		sum := 0
		for _, n := range s {
			sum += n
		}
		if sum != len(gws) {
			t.Errorf("sample %d counts %d gateways, want %d", i, sum, len(gws))
		}
	}
}

// TestSeriesAsSampled: series, which looks a gateway up only where its
// outcome changes, counts what looking up every gateway at every sample
// counts.
func TestSeriesAsSampled(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	states := []string{api.GwQueued, api.GwInProgress, api.GwSucceeded, api.GwFailed, api.GwTimedOut, api.GwCanceled, api.GwRollingBack, api.GwRolledBack}
	for round := range 50 {
		var gws []api.RolloutGateway
		for i := range 1 + rnd.IntN(40) {
			d := float64(rnd.IntN(120)) / 10 // on samples, between them, or none
			if rnd.IntN(5) == 0 {
				d = -1
			}
			f := d + float64(rnd.IntN(50))/10
			if rnd.IntN(4) == 0 {
				f = -1
			}
			gws = append(gws, gw(fmt.Sprint(i), states[rnd.IntN(len(states))], d, f))
		}
		n := 1 + rnd.IntN(30)
		start, end := at(0), at(float64(1+rnd.IntN(15)))
		got := series(gws, start, end, n)
		first := end
		for _, g := range gws {
			if outcomeOf(g.State) != outRolledBack && !g.DispatchedAt.IsZero() && g.DispatchedAt.Before(first) {
				first = g.DispatchedAt
			}
		}
		for i := 0; i <= n; i++ {
			var want [numOutcomes]int
			ti := start.Add(end.Sub(start) * time.Duration(i) / time.Duration(n))
			for _, g := range gws {
				want[outcomeAt(g, ti, first)]++
			}
			if got[i] != want {
				t.Fatalf("round %d, sample %d of %d: got %v, want %v", round, i, n, got[i], want)
			}
		}
	}
}

func TestStateChart(t *testing.T) {
	tests := []struct {
		name     string
		gws      []api.RolloutGateway
		bands    []string // the classes of the bands drawn, bottom up
		contains []string
	}{
		{name: "no gateways", contains: []string{"no gateways"}},
		{name: "all succeeded", gws: []api.RolloutGateway{gw("a", api.GwSucceeded, 0, 5), gw("b", api.GwSucceeded, 1, 6)},
			bands: []string{"ok", "warn", "queued"}, contains: []string{`>2</text>`, `>1</text>`, `>+10s</text>`, "Gateways per state over 10s"}},
		{name: "aborted with rollbacks", gws: []api.RolloutGateway{gw("a", api.GwFailed, 0, 2), gw("b", api.GwRolledBack, 3, 5), gw("c", api.GwCanceled, -1, 3)},
			bands: []string{"bad", "back", "idle", "warn", "queued"}},
	}
	band := regexp.MustCompile(`<path class="band ([a-z]+)"`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svg := string(stateChart(tt.gws, at(0), at(10)))
			if !strings.HasPrefix(svg, "<svg") || !strings.HasSuffix(svg, "</svg>") {
				t.Fatalf("not an svg: %.80s…", svg)
			}
			var got []string
			for _, m := range band.FindAllStringSubmatch(svg, -1) {
				got = append(got, m[1])
			}
			if strings.Join(got, ",") != strings.Join(tt.bands, ",") {
				t.Errorf("bands %v, want %v", got, tt.bands)
			}
			for _, s := range tt.contains {
				if !strings.Contains(svg, s) {
					t.Errorf("chart lacks %q", s)
				}
			}
			if strings.Contains(svg, "style=") || strings.Contains(svg, "NaN") {
				t.Errorf("chart has a style attribute or NaN: %s", svg)
			}
		})
	}
}

func TestBar(t *testing.T) {
	tests := []struct {
		name  string
		segs  []segment
		total int
		want  []string
	}{
		{"shares", []segment{{5, "ok"}, {0, "bad"}, {5, "warn"}}, 20,
			[]string{`class="ok" x="0.00" y="0" width="25.00"`, `class="warn" x="25.00" y="0" width="25.00"`}},
		{"no gateways", []segment{{0, "ok"}}, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svg := string(bar(tt.segs, tt.total, `5 "ok" <of> 20`))
			if n := strings.Count(svg, "<rect"); n != 1+len(tt.want) {
				t.Errorf("%d rects, want %d: %s", n, 1+len(tt.want), svg)
			}
			for _, w := range tt.want {
				if !strings.Contains(svg, w) {
					t.Errorf("bar lacks %s: %s", w, svg)
				}
			}
			if !strings.Contains(svg, `aria-label="5 &#34;ok&#34; &lt;of&gt; 20"`) {
				t.Errorf("label not escaped: %s", svg)
			}
		})
	}
}

func TestFunnel(t *testing.T) {
	v := &api.RolloutView{Total: 20, Counts: map[string]int{api.GwQueued: 2, api.GwInProgress: 3, api.GwSucceeded: 10,
		api.GwFailed: 1, api.GwTimedOut: 1, api.GwRolledBack: 2, api.GwRollingBack: 1}}
	flow, ends := funnel(v)
	got := map[string]string{}
	for _, s := range append(flow, ends...) {
		got[s.Name] = s.Percent
		if s.Count == 0 && s.Percent != "0%" {
			t.Errorf("%s: 0 gateways but %s", s.Name, s.Percent)
		}
	}
	want := map[string]string{"queued": "10%", "in progress": "15%", "succeeded": "50%", "failed": "10%", "rolled back": "15%"}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
	if _, ok := got["canceled"]; ok {
		t.Errorf("canceled shown with none canceled")
	}
	if txt := progressText(v); txt != "10 succeeded, 2 failed, 3 rolled back, 3 in progress, 2 queued of 20" {
		t.Errorf("progress text %q", txt)
	}
}

func TestChartSpan(t *testing.T) {
	now := at(100)
	tests := []struct {
		name       string
		v          api.RolloutView
		start, end time.Time
	}{
		{"active: until now", api.RolloutView{Rollout: api.Rollout{CreatedAt: at(10)}, Active: true}, at(10), now},
		{"finished", api.RolloutView{Rollout: api.Rollout{CreatedAt: at(10), FinishedAt: at(40)}}, at(10), at(40)},
		{"rollbacks finished after the abort", api.RolloutView{Rollout: api.Rollout{CreatedAt: at(10), FinishedAt: at(40)},
			Gateways: []api.RolloutGateway{gw("a", api.GwRolledBack, 40, 47)}}, at(10), at(47)},
		{"at least a second", api.RolloutView{Rollout: api.Rollout{CreatedAt: at(10), FinishedAt: at(10)}}, at(10), at(11)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, e := chartSpan(&tt.v, now)
			if !s.Equal(tt.start) || !e.Equal(tt.end) {
				t.Errorf("got %s…%s, want %s…%s", s, e, tt.start, tt.end)
			}
		})
	}
}
