package fetch

import (
	"sync"
	"sync/atomic"
	"time"
)

// Progress is the state of one Fetch: bytes of the image's config and layers
// in the store or its partial files, out of their total.
type Progress struct {
	Done, Total int64
}

// progress counts the bytes of one Fetch and calls the callback at most once
// a second.
type progress struct {
	done  atomic.Int64
	total int64
	fn    func(Progress)

	mu   sync.Mutex // guards last and serialises calls of fn
	last time.Time
}

func (p *progress) add(n int64) {
	d := p.done.Add(n)
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if !p.last.IsZero() && now.Sub(p.last) < time.Second {
		return
	}
	p.last = now
	p.fn(Progress{Done: d, Total: p.total})
}
