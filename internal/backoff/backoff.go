// Package backoff computes exponential back-off with full jitter: the delay
// before attempt n is uniform in [0, min(Max, Base*2^n)). Full jitter keeps a
// fleet from reconnecting in lock-step after a broker restart.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is an exponential back-off with full jitter.
type Policy struct {
	Base time.Duration // ceiling of the first retry's delay
	Max  time.Duration // cap of the ceiling
	// Rand returns a uniform value in [0, n); nil means math/rand/v2.
	Rand func(n int64) int64
}

// Ceiling is the upper bound of the delay before retry n (n >= 1).
func (p Policy) Ceiling(n int) time.Duration {
	if n < 1 {
		return 0
	}
	c := p.Base
	for i := 1; i < n && c < p.Max; i++ {
		c *= 2
	}
	return min(c, p.Max)
}

// Delay is the jittered delay before retry n; zero for n < 1, so a first
// attempt is never delayed.
func (p Policy) Delay(n int) time.Duration {
	c := p.Ceiling(n)
	if c <= 0 {
		return 0
	}
	r := p.Rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(c)))
}
