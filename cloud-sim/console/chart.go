package console

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// The chart's geometry, in SVG user units.
const (
	loadW, loadH             = 640, 170
	loadLeft, loadRight      = 40, 10
	loadTop, loadBottom      = 10, 24
	loadGap                  = 5 * time.Minute // a longer silence breaks the lines
	loadPlotW, loadPlotH     = loadW - loadLeft - loadRight, loadH - loadTop - loadBottom
	loadMaxPercent       int = 100
)

// chartSeries is one line of the chart: its name, CSS class and value.
type chartSeries struct {
	name, class string
	value       func(api.MetricSample) float64
}

// chartLines are the chart's series.
func chartLines() []chartSeries {
	return []chartSeries{
		{"CPU load per CPU", "s-cpu", func(s api.MetricSample) float64 {
			if s.CPUs == 0 {
				return 100 * s.Load1
			}
			return 100 * s.Load1 / float64(s.CPUs)
		}},
		{"Memory used", "s-mem", func(s api.MetricSample) float64 { return s.MemoryUsedPercent }},
		{"Disk used", "s-disk", func(s api.MetricSample) float64 { return s.DiskUsedPercent }},
	}
}

// metricsChart draws the samples of the window before now as an SVG line
// chart of three percentages (CPU load per CPU, memory, disk; 0–100, a
// load over 100% drawn at the top). A silence longer than loadGap breaks
// the lines. Without a sample in the window it says so in words.
func metricsChart(samples []api.MetricSample, now time.Time, window time.Duration) template.HTML {
	from := now.Add(-window)
	in := make([]api.MetricSample, 0, len(samples))
	for _, s := range samples {
		if !s.At.Before(from) && !s.At.After(now) {
			in = append(in, s)
		}
	}
	if len(in) == 0 {
		return template.HTML(`<p class="muted chart-empty">No heartbeat metrics in the last ` + template.HTMLEscapeString(shortDuration(window)) + `.</p>`)
	}
	slices.SortStableFunc(in, func(a, b api.MetricSample) int { return a.At.Compare(b.At) })
	x := func(t time.Time) float64 { return loadLeft + loadPlotW*float64(t.Sub(from))/float64(window) }
	y := func(v float64) float64 {
		v = min(max(v, 0), float64(loadMaxPercent))
		return loadTop + loadPlotH*(1-v/float64(loadMaxPercent))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-labelledby="chart-title">`, loadW, loadH, loadW, loadH)
	fmt.Fprintf(&b, `<title id="chart-title">CPU load per CPU, memory and disk used, %% over the last %s</title>`, shortDuration(window))
	for _, p := range []int{0, 50, 100} {
		fmt.Fprintf(&b, `<line class="grid" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/><text x="%d" y="%.1f" text-anchor="end">%d%%</text>`,
			loadLeft, loadW-loadRight, y(float64(p)), y(float64(p)), loadLeft-4, y(float64(p))+3, p)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d">-%s</text><text x="%d" y="%d" text-anchor="end">now</text>`,
		loadLeft, loadH-6, shortDuration(window), loadW-loadRight, loadH-6)
	for _, l := range chartLines() {
		fmt.Fprintf(&b, `<path class="%s" d="%s"/>`, l.class, chartPath(in, l.value, x, y))
		if len(in) == 1 {
			fmt.Fprintf(&b, `<circle class="%s" cx="%.1f" cy="%.1f" r="2.5"/>`, l.class, x(in[0].At), y(l.value(in[0])))
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// chartPath is the SVG path of one series: a move at the first sample and
// after each gap, a line to the others.
func chartPath(in []api.MetricSample, value func(api.MetricSample) float64, x func(time.Time) float64, y func(float64) float64) string {
	var b strings.Builder
	for i, s := range in {
		op := "L"
		if i == 0 || s.At.Sub(in[i-1].At) > loadGap {
			op = "M"
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s%.1f,%.1f", op, x(s.At), y(value(s)))
	}
	return b.String()
}

// chartLegend names the chart's lines and their latest values, so that
// neither the colour nor the picture alone tells them.
type legendEntry struct {
	Name, Class, Latest string
}

func chartLegend(samples []api.MetricSample) []legendEntry {
	var last *api.MetricSample
	for i := range samples {
		if last == nil || samples[i].At.After(last.At) {
			last = &samples[i]
		}
	}
	out := make([]legendEntry, 0, 3)
	for _, l := range chartLines() {
		e := legendEntry{Name: l.name, Class: l.class, Latest: "–"}
		if last != nil {
			e.Latest = fmt.Sprintf("%.0f%%", l.value(*last))
		}
		out = append(out, e)
	}
	return out
}

// shortDuration writes d without its zero parts: "1h", "90m" as "1h30m".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
