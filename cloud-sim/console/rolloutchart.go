package console

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// outcome groups the per-gateway rollout states as the rollout pages
// show them: the funnel's stages, the progress bar's segments and the
// chart's bands, in the order they are stacked.
type outcome int

const (
	outSucceeded outcome = iota
	outFailed
	outRolledBack
	outCanceled
	outInProgress
	outQueued
	numOutcomes
)

// outcomes name each outcome (the legend's text) and its CSS class.
var outcomes = [numOutcomes]struct{ name, class string }{
	outSucceeded:  {"succeeded", "ok"},
	outFailed:     {"failed", "bad"},
	outRolledBack: {"rolled back", "back"},
	outCanceled:   {"canceled", "idle"},
	outInProgress: {"in progress", "warn"},
	outQueued:     {"queued", "queued"},
}

// outcomeOf is the outcome a gateway in state s counts toward.
func outcomeOf(s string) outcome {
	switch s {
	case api.GwSucceeded:
		return outSucceeded
	case api.GwFailed, api.GwRejected, api.GwTimedOut:
		return outFailed
	case api.GwRollingBack, api.GwRolledBack:
		return outRolledBack
	case api.GwCanceled:
		return outCanceled
	case api.GwInProgress:
		return outInProgress
	}
	return outQueued
}

// tally counts a rollout's gateways per outcome.
func tally(counts map[string]int) [numOutcomes]int {
	var t [numOutcomes]int
	for s, n := range counts {
		t[outcomeOf(s)] += n
	}
	return t
}

// stage is one box of a rollout's funnel.
type stage struct {
	Name, Class, Percent string
	Count                int
	Bar                  template.HTML
}

// funnel is a rollout's gateways from queued through in progress to their
// outcomes, each with its count and share of all. Canceled gateways
// appear only when there are some.
func funnel(v *api.RolloutView) (flow, ends []stage) {
	t := tally(v.Counts)
	mk := func(o outcome) stage {
		return stage{Name: outcomes[o].name, Class: outcomes[o].class, Count: t[o], Percent: percent(t[o], v.Total),
			Bar: bar([]segment{{t[o], outcomes[o].class}}, v.Total, outcomes[o].name)}
	}
	flow = []stage{mk(outQueued), mk(outInProgress)}
	ends = []stage{mk(outSucceeded), mk(outFailed), mk(outRolledBack)}
	if t[outCanceled] > 0 {
		ends = append(ends, mk(outCanceled))
	}
	return flow, ends
}

// segment is one part of a bar: n gateways drawn with a CSS class.
type segment struct {
	n     int
	class string
}

// bar draws segments side by side as a share of total, as inline SVG (the
// console's CSP forbids style attributes; SVG geometry is attributes).
// label is its accessible text.
func bar(segs []segment, total int, label string) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="bar-svg" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label="%s">`,
		template.HTMLEscapeString(label))
	b.WriteString(`<rect class="track" x="0" y="0" width="100" height="10"/>`)
	x := 0.0
	for _, s := range segs {
		if s.n <= 0 || total <= 0 {
			continue
		}
		w := 100 * float64(s.n) / float64(total)
		fmt.Fprintf(&b, `<rect class="%s" x="%.2f" y="0" width="%.2f" height="10"/>`, s.class, x, w)
		x += w
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// progressBar is a rollout's progress: succeeded, failed, rolled back,
// canceled and in progress as shares of all its gateways.
func progressBar(v *api.RolloutView) template.HTML {
	t := tally(v.Counts)
	var segs []segment
	for _, o := range []outcome{outSucceeded, outFailed, outRolledBack, outCanceled, outInProgress} {
		segs = append(segs, segment{t[o], outcomes[o].class})
	}
	return bar(segs, v.Total, progressText(v))
}

// progressText says what the progress bar draws.
func progressText(v *api.RolloutView) string {
	t := tally(v.Counts)
	parts := []string{fmt.Sprintf("%d succeeded", t[outSucceeded]), fmt.Sprintf("%d failed", t[outFailed])}
	if t[outRolledBack] > 0 {
		parts = append(parts, fmt.Sprintf("%d rolled back", t[outRolledBack]))
	}
	parts = append(parts, fmt.Sprintf("%d in progress", t[outInProgress]))
	if t[outQueued] > 0 {
		parts = append(parts, fmt.Sprintf("%d queued", t[outQueued]))
	}
	if t[outCanceled] > 0 {
		parts = append(parts, fmt.Sprintf("%d canceled", t[outCanceled]))
	}
	return strings.Join(parts, ", ") + fmt.Sprintf(" of %d", v.Total)
}

// outcomeAt is the outcome gateway g had at time t, from its dispatch and
// finish times. firstDispatch is the rollout's first dispatch: a rolled
// back gateway's record keeps only its rollback's dispatch time, so it is
// drawn in progress from the first dispatch until its rollback.
func outcomeAt(g api.RolloutGateway, t, firstDispatch time.Time) outcome {
	o := outcomeOf(g.State)
	switch o {
	case outQueued:
		return outQueued
	case outCanceled:
		if t.Before(g.FinishedAt) {
			return outQueued
		}
		return outCanceled
	case outRolledBack:
		switch {
		case t.Before(firstDispatch):
			return outQueued
		case t.Before(g.DispatchedAt):
			return outInProgress
		}
		return outRolledBack
	}
	switch {
	case g.DispatchedAt.IsZero() && t.Before(g.FinishedAt): // timed out in the queue
		return outQueued
	case !g.DispatchedAt.IsZero() && t.Before(g.DispatchedAt):
		return outQueued
	case o == outInProgress || t.Before(g.FinishedAt):
		return outInProgress
	}
	return o
}

// series counts the gateways per outcome at n+1 evenly spaced times from
// start to end (n ≥ 1). A gateway's outcome changes only at its dispatch,
// its finish and the rollout's first dispatch, so it is looked up there
// and added to the samples up to its next change: the cost is gateways
// plus samples, not their product (10,000 gateways every second).
func series(gws []api.RolloutGateway, start, end time.Time, n int) [][numOutcomes]int {
	first := end
	for _, g := range gws {
		if o := outcomeOf(g.State); o != outRolledBack && !g.DispatchedAt.IsZero() && g.DispatchedAt.Before(first) {
			first = g.DispatchedAt
		}
	}
	span := end.Sub(start)
	sample := func(i int) time.Time { return start.Add(span * time.Duration(i) / time.Duration(n)) }
	// from is the first sample at or after x.
	from := func(x time.Time) int {
		i := 0
		if span > 0 && x.After(start) {
			i = min(n+1, int(float64(x.Sub(start))*float64(n)/float64(span)))
		}
		for i > 0 && !sample(i-1).Before(x) {
			i--
		}
		for i <= n && sample(i).Before(x) {
			i++
		}
		return i
	}
	diff := make([][numOutcomes]int, n+2)
	for _, g := range gws {
		var buf [4]int
		breaks := buf[:1]
		for _, x := range []time.Time{first, g.DispatchedAt, g.FinishedAt} {
			if i := from(x); !x.IsZero() && i <= n {
				breaks = append(breaks, i)
			}
		}
		slices.Sort(breaks)
		breaks = slices.Compact(breaks)
		for k, i := range breaks {
			next := n + 1
			if k+1 < len(breaks) {
				next = breaks[k+1]
			}
			o := outcomeAt(g, sample(i), first)
			diff[i][o]++
			diff[next][o]--
		}
	}
	out := make([][numOutcomes]int, n+1)
	var run [numOutcomes]int
	for i := range out {
		for o := range numOutcomes {
			run[o] += diff[i][o]
		}
		out[i] = run
	}
	return out
}

// chartSpan is the time a rollout's chart covers: from its creation to
// now while it (or a rollback) runs, else to its last finish.
func chartSpan(v *api.RolloutView, now time.Time) (start, end time.Time) {
	start, end = v.CreatedAt, v.FinishedAt
	if v.Active || v.Counts[api.GwRollingBack] > 0 || end.IsZero() {
		end = now
	}
	for _, g := range v.Gateways {
		if g.FinishedAt.After(end) {
			end = g.FinishedAt
		}
	}
	if end.Sub(start) < time.Second {
		end = start.Add(time.Second)
	}
	return start, end
}

// The chart's geometry, in SVG user units.
const (
	chartW, chartH                = 760, 220
	chartLeft, chartRight         = 44, 12
	chartTop, chartBottom         = 10, 26
	chartSamples                  = 120
	plotW, plotH          float64 = chartW - chartLeft - chartRight, chartH - chartTop - chartBottom
)

// stateChart draws the gateways per outcome over time as stacked areas,
// an inline SVG with axes; the legend is the page's.
func stateChart(gws []api.RolloutGateway, start, end time.Time) template.HTML {
	total := len(gws)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart rollout-chart" viewBox="0 0 %d %d" role="img" aria-labelledby="chart-title"><title id="chart-title">%s</title>`,
		chartW, chartH, template.HTMLEscapeString(chartTitle(gws, start, end)))
	if total == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" class="empty">no gateways</text></svg>`, chartW/2-30, chartH/2)
		return template.HTML(b.String())
	}
	s := series(gws, start, end, chartSamples)
	x := func(i int) float64 { return chartLeft + plotW*float64(i)/chartSamples }
	y := func(n int) float64 { return chartTop + plotH*(1-float64(n)/float64(total)) }
	low := make([]int, len(s))
	for o := range numOutcomes {
		high := make([]int, len(s))
		for i := range s {
			high[i] = low[i] + s[i][o]
		}
		if !equal(low, high) {
			var p strings.Builder
			for i := range s {
				fmt.Fprintf(&p, "%s%.1f,%.1f", sep(i, "M", "L"), x(i), y(high[i]))
			}
			for i := len(s) - 1; i >= 0; i-- {
				fmt.Fprintf(&p, "L%.1f,%.1f", x(i), y(low[i]))
			}
			fmt.Fprintf(&b, `<path class="band %s" d="%sZ"><title>%s</title></path>`, outcomes[o].class, p.String(), outcomes[o].name)
		}
		low = high
	}
	axes(&b, total, end.Sub(start))
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func equal(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sep(i int, first, rest string) string {
	if i == 0 {
		return first
	}
	return rest
}

// axes draws the chart's frame, its gateway counts and its time ticks
// (time since the rollout's start).
func axes(b *strings.Builder, total int, span time.Duration) {
	bottom := chartTop + plotH
	fmt.Fprintf(b, `<path class="axis" d="M%d,%d V%.1f H%.1f"/>`, chartLeft, chartTop, bottom, chartLeft+plotW)
	for _, n := range []int{0, total / 2, total} {
		if n == total/2 && (n == 0 || n == total) {
			continue
		}
		yy := chartTop + plotH*(1-float64(n)/float64(total))
		if n != 0 && n != total {
			fmt.Fprintf(b, `<path class="grid" d="M%d,%.1f H%.1f"/>`, chartLeft, yy, chartLeft+plotW)
		}
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%d</text>`, chartLeft-6, yy+4, n)
	}
	for i := 0; i <= 4; i++ {
		xx := chartLeft + plotW*float64(i)/4
		anchor := map[int]string{0: "start", 4: "end"}[i]
		if anchor == "" {
			anchor = "middle"
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="%s">%s</text>`, xx, bottom+16, anchor, offset(span*time.Duration(i)/4))
	}
}

// offset writes a time since the start as +1m30s, rounded to what the
// span needs.
func offset(d time.Duration) string {
	switch {
	case d == 0:
		return "start"
	case d < 10*time.Second:
		return "+" + d.Round(100*time.Millisecond).String()
	case d < time.Hour:
		return "+" + d.Round(time.Second).String()
	}
	return "+" + d.Round(time.Minute).String()
}

// chartTitle describes the chart in words, for screen readers.
func chartTitle(gws []api.RolloutGateway, start, end time.Time) string {
	return fmt.Sprintf("Gateways per state over %s from %s: %d gateways", end.Sub(start).Round(time.Second),
		start.UTC().Format("15:04:05 UTC"), len(gws))
}
