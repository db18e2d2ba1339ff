package simfleet

import (
	"context"
	"testing"
	"time"
)

// TestPullTime: with a link rate a simulated pull takes the image's size
// over the link, on top of PullTime; without one, PullTime alone.
func TestPullTime(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want time.Duration
	}{
		{"pull time", Config{PullTime: 10 * time.Millisecond}, 10 * time.Millisecond},
		{"the default image over a link", Config{LinkRate: 10 << 20}, time.Second},
		{"a larger image takes longer", Config{PullTime: time.Millisecond, ImageBytes: 64 << 20, LinkRate: 8 << 20}, 8*time.Second + time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := newEngine(tt.cfg, 1, "sim-1")
			if eng.PullDelay != tt.want {
				t.Errorf("pull takes %s, want %s", eng.PullDelay, tt.want)
			}
			size, err := eng.ImageSize(context.Background(), "registry.example.com/web:1", "")
			if want := max(tt.cfg.ImageBytes, 10<<20); err != nil || size != want {
				t.Errorf("image size %d, %v; want %d", size, err, want)
			}
		})
	}
}
