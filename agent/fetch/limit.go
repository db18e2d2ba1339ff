package fetch

import (
	"context"
	"sync"
	"time"
)

// limiter is a token bucket shared by all the downloads of a Fetcher: each
// caller reserves the bytes it has just read and waits until the bucket has
// paid for them, so the downloads together stay under rate bytes/s.
type limiter struct {
	rate  float64 // bytes per second
	burst float64

	mu     sync.Mutex // guards tokens and last
	tokens float64
	last   time.Time
}

func newLimiter(rate int64) *limiter {
	if rate <= 0 {
		return nil
	}
	burst := min(max(float64(rate)/20, 4<<10), 32<<10)
	return &limiter{rate: float64(rate), burst: burst, tokens: burst, last: time.Now()}
}

// chunk is the most a download should read before paying: one burst.
func (l *limiter) chunk(n int) int {
	if l == nil {
		return n
	}
	return min(n, int(l.burst))
}

// wait pays for n bytes, blocking until the bucket allows them.
func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	deficit := -l.tokens
	l.mu.Unlock()
	if deficit <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(deficit / l.rate * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
