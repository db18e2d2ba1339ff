package console

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

func TestMetricsChart(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(minutesAgo int) time.Time { return now.Add(-time.Duration(minutesAgo) * time.Minute) }
	tests := []struct {
		name    string
		samples []api.MetricSample
		// wantPaths are the d attributes of the CPU, memory and disk lines.
		wantPaths []string
		wantText  string // when no chart is drawn
		wantDots  int
	}{
		{name: "none", wantText: "No heartbeat metrics in the last 1h."},
		{name: "all older than the window", samples: []api.MetricSample{{At: at(61), Load1: 1, CPUs: 1}}, wantText: "No heartbeat metrics"},
		{
			name: "one sample is a dot", samples: []api.MetricSample{{At: at(30), Load1: 2, CPUs: 4, MemoryUsedPercent: 25, DiskUsedPercent: 100}},
			// x = 40 + 590*30/60 = 335; y = 10 + 136*(1-v/100).
			wantPaths: []string{"M335.0,78.0", "M335.0,112.0", "M335.0,10.0"}, wantDots: 3,
		},
		{
			name: "a line, sorted by time, clamped to 0–100",
			samples: []api.MetricSample{
				{At: at(0), Load1: 8, CPUs: 4, MemoryUsedPercent: -5, DiskUsedPercent: 50},
				{At: at(4), Load1: 0, CPUs: 4, MemoryUsedPercent: 50, DiskUsedPercent: 50},
			},
			wantPaths: []string{"M590.7,146.0 L630.0,10.0", "M590.7,78.0 L630.0,146.0", "M590.7,78.0 L630.0,78.0"},
		},
		{
			name: "a silence over 5 minutes breaks the line",
			samples: []api.MetricSample{
				{At: at(60), MemoryUsedPercent: 50}, {At: at(58), MemoryUsedPercent: 50}, {At: at(0), MemoryUsedPercent: 50},
			},
			wantPaths: []string{"M40.0,146.0 L59.7,146.0 M630.0,146.0", "M40.0,78.0 L59.7,78.0 M630.0,78.0", "M40.0,146.0 L59.7,146.0 M630.0,146.0"},
		},
		{
			name: "no CPU count: load as if one CPU", samples: []api.MetricSample{{At: at(0), Load1: 0.5}, {At: at(1), Load1: 0.5}},
			wantPaths: []string{"M620.2,78.0 L630.0,78.0", "M620.2,146.0 L630.0,146.0", "M620.2,146.0 L630.0,146.0"},
		},
	}
	paths := regexp.MustCompile(`<path class="s-[a-z]+" d="([^"]*)"`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(metricsChart(tt.samples, now, time.Hour))
			if tt.wantText != "" {
				if !strings.Contains(got, tt.wantText) || strings.Contains(got, "<svg") {
					t.Fatalf("got %s, want a text with %q", got, tt.wantText)
				}
				return
			}
			var ds []string
			for _, m := range paths.FindAllStringSubmatch(got, -1) {
				ds = append(ds, m[1])
			}
			if strings.Join(ds, "|") != strings.Join(tt.wantPaths, "|") {
				t.Errorf("paths\n got %q\nwant %q", ds, tt.wantPaths)
			}
			if n := strings.Count(got, "<circle"); n != tt.wantDots {
				t.Errorf("got %d dots, want %d", n, tt.wantDots)
			}
			if !strings.HasPrefix(got, "<svg") || !strings.Contains(got, `role="img"`) || !strings.Contains(got, "<title") {
				t.Errorf("not an accessible SVG: %s", got)
			}
		})
	}
}

func TestChartLegend(t *testing.T) {
	now := time.Now()
	got := chartLegend([]api.MetricSample{
		{At: now, Load1: 1, CPUs: 4, MemoryUsedPercent: 40.4, DiskUsedPercent: 70},
		{At: now.Add(-time.Minute), Load1: 4, CPUs: 4, MemoryUsedPercent: 99, DiskUsedPercent: 99},
	})
	want := []string{"CPU load per CPU 25%", "Memory used 40%", "Disk used 70%"}
	for i, e := range got {
		if s := e.Name + " " + e.Latest; s != want[i] {
			t.Errorf("legend %d: got %q, want %q", i, s, want[i])
		}
	}
	if e := chartLegend(nil); e[0].Latest != "–" {
		t.Errorf("no samples: got %q, want –", e[0].Latest)
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", 90 * time.Minute: "1h30m", 30 * time.Minute: "30m", 45 * time.Second: "45s", 61 * time.Minute: "1h1m"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
