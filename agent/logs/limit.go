package logs

import (
	"sync"
	"time"
)

// bucket is the token bucket that the streams of a Manager share: a line
// is sent only if the bucket holds its bytes, and dropped otherwise (a log
// stream must not fall behind the container it follows, nor wait).
type bucket struct {
	rate  float64 // bytes per second; nil bucket: unlimited
	burst float64
	now   func() time.Time

	mu     sync.Mutex // guards tokens and last
	tokens float64
	last   time.Time
}

func newBucket(rate, burst int64, now func() time.Time) *bucket {
	if rate <= 0 {
		return nil
	}
	return &bucket{rate: float64(rate), burst: float64(burst), now: now, tokens: float64(burst), last: now()}
}

// allow takes n bytes (at most a burst) from the bucket if it holds them.
func (b *bucket) allow(n int) bool {
	if b == nil {
		return true
	}
	cost := min(float64(n), b.burst)
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.tokens = min(b.burst, b.tokens+max(0, now.Sub(b.last).Seconds())*b.rate)
	b.last = now
	if b.tokens < cost {
		return false
	}
	b.tokens -= cost
	return true
}
