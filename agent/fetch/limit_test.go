package fetch

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// Downloads sharing a limiter together stay at its rate (fake clock).
func TestLimiterShared(t *testing.T) {
	tests := []struct {
		rate    int64
		readers int
		bytes   int // per reader
	}{
		{rate: 4 << 20, readers: 1, bytes: 2 << 20},
		{rate: 4 << 20, readers: 3, bytes: 2 << 20},
		{rate: 128 << 10, readers: 2, bytes: 256 << 10},
	}
	for _, tt := range tests {
		synctest.Test(t, func(t *testing.T) {
			l := newLimiter(tt.rate)
			start := time.Now()
			var wg sync.WaitGroup
			for range tt.readers {
				wg.Go(func() {
					for left := tt.bytes; left > 0; {
						n := l.chunk(min(left, 32<<10))
						if err := l.wait(context.Background(), n); err != nil {
							t.Error(err)
							return
						}
						left -= n
					}
				})
			}
			wg.Wait()
			total := float64(tt.readers * tt.bytes)
			got := total / time.Since(start).Seconds()
			if got > float64(tt.rate)*1.05 || got < float64(tt.rate)*0.95 {
				t.Errorf("rate %d, %d readers: got %.0f bytes/s", tt.rate, tt.readers, got)
			}
		})
	}
}

func TestLimiterUnlimited(t *testing.T) {
	var l *limiter = newLimiter(0)
	if l != nil || l.chunk(100) != 100 || l.wait(context.Background(), 1<<30) != nil {
		t.Errorf("a zero rate limits")
	}
}

func TestLimiterCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(1 << 10)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := l.wait(ctx, 1<<20); err != context.DeadlineExceeded {
			t.Errorf("wait = %v, want the context's error", err)
		}
	})
}

// The callback runs at most once a second, however often bytes arrive.
func TestProgressOncePerSecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var got []Progress
		p := &progress{total: 1000, fn: func(pr Progress) { got = append(got, pr) }}
		for range 25 { // 2.5 s of a chunk every 100 ms
			p.add(10)
			time.Sleep(100 * time.Millisecond)
		}
		want := []Progress{{10, 1000}, {110, 1000}, {210, 1000}}
		if len(got) != len(want) {
			t.Fatalf("calls = %v, want %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("call %d = %v, want %v", i, got[i], want[i])
			}
		}
	})
}
