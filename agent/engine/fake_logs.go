package engine

import (
	"context"
	"sync"
	"time"
)

// FakeLogs gives the fake engine's containers an output, for tests of logs
// streams: lines are written by the test, and a follow ends when the
// container stops or is removed, as with Docker.
type FakeLogs struct {
	*Fake

	mu       sync.Mutex // guards lines, services and changed
	lines    map[string][]LogEntry
	services map[string]string
	changed  chan struct{} // closed and replaced on every Write
}

// NewFakeLogs returns f with an output per container.
func NewFakeLogs(f *Fake) *FakeLogs {
	return &FakeLogs{Fake: f, lines: map[string][]LogEntry{}, services: map[string]string{}, changed: make(chan struct{})}
}

// SetService names the service of container id (by default the
// deployment's name, as for a single-container deployment).
func (l *FakeLogs) SetService(id, service string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.services[id] = service
}

// Write appends a line to container id's output; a zero Time is now.
func (l *FakeLogs) Write(id string, e LogEntry) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines[id] = append(l.lines[id], e)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *FakeLogs) LogSources(ctx context.Context, deployment string) ([]LogSource, error) {
	cs, err := l.List(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var all []LogSource
	for _, c := range cs {
		if c.Deployment != deployment {
			continue
		}
		svc := l.services[c.ID]
		if svc == "" {
			svc = deployment
		}
		all = append(all, LogSource{ContainerID: c.ID, Service: svc, Revision: c.Revision, Running: c.Running})
	}
	return CurrentSources(all), nil
}

func (l *FakeLogs) ContainerLogs(ctx context.Context, id string, o LogOptions, emit func(LogEntry) error) error {
	events, _ := l.Events(ctx)
	if _, err := l.Inspect(ctx, id); err != nil {
		return err
	}
	l.mu.Lock()
	var first []LogEntry
	for _, e := range l.lines[id] {
		if o.Since.IsZero() || !e.Time.Before(o.Since) {
			first = append(first, e)
		}
	}
	if o.Tail >= 0 && len(first) > o.Tail {
		first = first[len(first)-o.Tail:]
	}
	sent, changed := len(l.lines[id]), l.changed
	l.mu.Unlock()
	for _, e := range first {
		if err := emit(e); err != nil {
			return err
		}
	}
	for o.Follow {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-events:
		case <-changed:
		}
		l.mu.Lock()
		next := l.lines[id][sent:]
		sent, changed = len(l.lines[id]), l.changed
		l.mu.Unlock()
		for _, e := range next {
			if err := emit(e); err != nil {
				return err
			}
		}
		if st, err := l.Inspect(ctx, id); err != nil || !st.Running {
			return nil
		}
	}
	return nil
}
