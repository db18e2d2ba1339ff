package backoff_test

import (
	"testing"
	"time"

	"github.com/fleet-agent/fleet/internal/backoff"
)

func TestCeiling(t *testing.T) {
	p := backoff.Policy{Base: time.Second, Max: 10 * time.Second}
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for n, w := range want {
		if got := p.Ceiling(n); got != w {
			t.Errorf("Ceiling(%d) = %v, want %v", n, got, w)
		}
	}
	if got := p.Ceiling(1000); got != 10*time.Second {
		t.Errorf("Ceiling(1000) = %v, want cap", got)
	}
}

func TestDelayIsJittered(t *testing.T) {
	var asked []int64
	p := backoff.Policy{Base: time.Second, Max: time.Minute, Rand: func(n int64) int64 {
		asked = append(asked, n)
		return n / 2
	}}
	if got := p.Delay(0); got != 0 {
		t.Errorf("Delay(0) = %v, want 0", got)
	}
	if got, want := p.Delay(3), 2*time.Second; got != want {
		t.Errorf("Delay(3) = %v, want %v", got, want)
	}
	if len(asked) != 1 || asked[0] != int64(4*time.Second) {
		t.Errorf("jitter drawn from %v, want [0, 4s)", asked)
	}
	real := backoff.Policy{Base: time.Second, Max: time.Minute}
	seen := map[time.Duration]bool{}
	for range 50 {
		d := real.Delay(4)
		if d < 0 || d >= 8*time.Second {
			t.Fatalf("Delay(4) = %v outside [0, 8s)", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("50 delays took only %d values; not jittered", len(seen))
	}
}
