package logs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Stream is one logs command's stream, from Open to the end of Run.
type Stream struct {
	m       *Manager
	req     Request
	sources []engine.LogSource
	done    chan struct{} // closed when Run returns

	mu       sync.Mutex              // guards stop and canceled
	stop     context.CancelCauseFunc // set by Run
	canceled bool                    // Cancel came before Run

	// Run's own, unguarded:
	seq        uint64
	lines      []*fleetv1.LogLine
	size       int // what lines cost: text and LineOverhead each
	dropLines  uint64
	dropBytes  uint64
	containers string // the ids, for messages
}

// item is a line of one source, or its end.
type item struct {
	service string
	entry   engine.LogEntry
	end     *sourceEnd
}

type sourceEnd struct {
	gone bool  // removed or replaced
	err  error // the source failed
}

// cancel ends the stream with CANCELED.
func (s *Stream) cancel() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.canceled = true
	if s.stop != nil {
		s.stop(errCanceled)
	}
}

// Run publishes the stream's chunks until every line asked for is sent or
// the follow ends, then its final chunk. It returns nil when the stream
// ended COMPLETE, UNTIL, CANCELED or CONTAINER_GONE, and the error of an
// ERROR end (ErrStopped when ctx ended: the agent is stopping).
func (s *Stream) Run(ctx context.Context) error {
	defer close(s.done)
	defer s.m.release(s)
	stopCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	s.mu.Lock()
	s.stop = stop
	if s.canceled {
		stop(errCanceled)
	}
	s.mu.Unlock()
	if s.req.Follow {
		var cancel context.CancelFunc
		stopCtx, cancel = context.WithDeadlineCause(stopCtx, s.until(), errUntil)
		defer cancel()
	}

	items := make(chan item, 64)
	readCtx, stopReading := context.WithCancel(stopCtx)
	var wg sync.WaitGroup
	for _, src := range s.sources {
		s.containers += " " + shortID(src.ContainerID)
		wg.Go(func() { s.read(readCtx, src, items) })
	}
	end, err := s.pump(stopCtx, ctx, items)
	stopReading()
	wg.Wait()
	s.final(ctx, end, err)
	s.m.log.Info("logs stream ended", "request_id", s.req.ID, "deployment", s.req.Deployment, "ended", end, "chunks", s.seq, "err", err)
	return err
}

// until is when a follow stops: the request's until, at most MaxFollow
// after the command was received.
func (s *Stream) until() time.Time {
	bound := s.req.Received.Add(s.m.cfg.MaxFollow)
	if s.req.Until.IsZero() || s.req.Until.After(bound) {
		return bound
	}
	return s.req.Until
}

// pump adds the sources' lines to chunks and publishes them until the
// stream ends (ctx: cancel, until, shutdown), and says how it ended. A
// chunk is published under pubCtx, which only the agent's shutdown ends:
// a cancel or until never cuts a publication that may have gone out, whose
// sequence the final chunk would then repeat.
func (s *Stream) pump(ctx, pubCtx context.Context, items <-chan item) (fleetv1.LogChunk_End, error) {
	flush := time.NewTimer(s.m.cfg.FlushInterval)
	flush.Stop()
	defer flush.Stop()
	left := len(s.sources)
	for {
		var err error
		select {
		case <-ctx.Done():
			return s.stopped(ctx)
		case <-flush.C:
			err = s.flush(pubCtx)
		case it := <-items:
			if it.end != nil {
				switch {
				case it.end.err != nil:
					return fleetv1.LogChunk_ERROR, it.end.err
				case it.end.gone:
					return fleetv1.LogChunk_CONTAINER_GONE, nil
				}
				if left--; left == 0 {
					return fleetv1.LogChunk_COMPLETE, nil
				}
				continue
			}
			idle := s.idle()
			err = s.add(pubCtx, it)
			if idle && !s.idle() {
				flush.Reset(s.m.cfg.FlushInterval)
			}
		}
		switch {
		case err == nil:
		case pubCtx.Err() != nil:
			// The agent stops; the chunk cut may have gone out: the final
			// chunk takes the next sequence and carries its lines again.
			s.seq++
			return fleetv1.LogChunk_ERROR, ErrStopped
		default:
			return fleetv1.LogChunk_ERROR, fmt.Errorf("publish a chunk: %w", err)
		}
	}
}

// stopped is the end of a stream whose context ended.
func (s *Stream) stopped(ctx context.Context) (fleetv1.LogChunk_End, error) {
	switch context.Cause(ctx) {
	case errCanceled:
		return fleetv1.LogChunk_CANCELED, nil
	case errUntil:
		return fleetv1.LogChunk_UNTIL, nil
	}
	return fleetv1.LogChunk_ERROR, ErrStopped
}

// idle: nothing waits to be published.
func (s *Stream) idle() bool { return len(s.lines) == 0 && s.dropLines == 0 }

// add puts a line into the pending chunk, in pieces of at most MaxLine,
// each paid from the rate limit (its text, service name and LineOverhead)
// or dropped and counted (its text); a full chunk is published first.
func (s *Stream) add(ctx context.Context, it item) error {
	stream := fleetv1.LogLine_STDOUT
	if it.entry.Stderr {
		stream = fleetv1.LogLine_STDERR
	}
	var ts *timestamppb.Timestamp
	if !it.entry.Time.IsZero() {
		ts = timestamppb.New(it.entry.Time)
	}
	for _, piece := range pieces(it.entry.Text, MaxLine) {
		n := len(piece) + LineOverhead + len(it.service)
		if !s.m.limit.allow(n) {
			s.dropLines++
			s.dropBytes += uint64(len(piece))
			continue
		}
		if len(s.lines) > 0 && s.size+n > s.m.cfg.ChunkSize {
			if err := s.flush(ctx); err != nil {
				return err
			}
		}
		s.lines = append(s.lines, &fleetv1.LogLine{Timestamp: ts, Stream: stream, Service: it.service, Text: piece})
		s.size += n
	}
	return nil
}

// chunk is the pending chunk.
func (s *Stream) chunk() *fleetv1.LogChunk {
	return &fleetv1.LogChunk{RequestId: s.req.ID, GatewayId: s.m.cfg.Gateway, Sequence: s.seq,
		Lines: s.lines, DroppedLines: s.dropLines, DroppedBytes: s.dropBytes}
}

// flush publishes the pending chunk, if anything waits.
func (s *Stream) flush(ctx context.Context) error {
	if s.idle() {
		return nil
	}
	if err := s.m.cfg.Publisher.PublishChunk(ctx, s.chunk()); err != nil {
		return err // kept pending: the final chunk carries it
	}
	s.seq++
	s.lines, s.size, s.dropLines, s.dropBytes = nil, 0, 0, 0
	return nil
}

// final publishes the last chunk, with what is pending, whatever stopped
// the stream (bounded by finalTimeout).
func (s *Stream) final(ctx context.Context, end fleetv1.LogChunk_End, err error) {
	c := s.chunk()
	c.Final, c.Ended, c.Code = true, end, errdefs.Code(err)
	switch {
	case err != nil:
		c.Message = err.Error()
	case end == fleetv1.LogChunk_CONTAINER_GONE:
		c.Message = "the container was removed or replaced (containers:" + s.containers + ")"
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalTimeout)
	defer cancel()
	if perr := s.m.cfg.Publisher.PublishChunk(fctx, c); perr != nil {
		s.m.log.Warn("final logs chunk not delivered", "request_id", s.req.ID, "err", perr)
		return
	}
	s.seq++
}

// read sends src's lines, and then its end, to items. A follow reads again
// after the container stopped once it runs again, from the line after the
// last it read; it ends when the container is removed or replaced.
func (s *Stream) read(ctx context.Context, src engine.LogSource, items chan<- item) {
	o := engine.LogOptions{Tail: s.tail(), Since: s.req.Since, Follow: s.req.Follow}
	var last time.Time
	emit := func(e engine.LogEntry) error {
		if e.Time.IsZero() {
			e.Time = last // a piece of a long line, or a line the engine gave no time
		} else {
			last = e.Time
		}
		return send(ctx, items, item{service: src.Service, entry: e})
	}
	for {
		err := s.m.cfg.Engine.ContainerLogs(ctx, src.ContainerID, o, emit)
		end := &sourceEnd{}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errdefs.ErrNotFound):
			end.gone = true
		case err != nil:
			end.err = err
		case s.req.Follow:
			end.gone, end.err = s.awaitRunning(ctx, src)
			if ctx.Err() != nil {
				return
			}
			if !end.gone && end.err == nil {
				o.Tail = -1
				if !last.IsZero() {
					o.Since = last.Add(time.Nanosecond)
				}
				continue
			}
		}
		_ = send(ctx, items, item{service: src.Service, end: end})
		return
	}
}

// awaitRunning waits, looking every PollInterval, until src's container
// runs again (false) or another container took its place or it is gone
// (true).
func (s *Stream) awaitRunning(ctx context.Context, src engine.LogSource) (gone bool, err error) {
	t := time.NewTicker(s.m.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
		all, err := s.m.cfg.Engine.LogSources(ctx, s.req.Deployment)
		if err != nil {
			return false, fmt.Errorf("look for the container of service %s: %w", src.Service, err)
		}
		i := -1
		for j, c := range all {
			if c.Service == src.Service {
				i = j
			}
		}
		switch {
		case i < 0 || all[i].ContainerID != src.ContainerID:
			return true, nil
		case all[i].Running:
			return false, nil
		}
	}
}

// tail is the engine's tail of the request (negative: every line).
func (s *Stream) tail() int {
	switch {
	case s.req.Tail > 0:
		return int(s.req.Tail)
	case !s.req.Since.IsZero():
		return -1
	}
	return DefaultTail
}

func send(ctx context.Context, items chan<- item, it item) error {
	select {
	case items <- it:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func shortID(id string) string { return id[:min(12, len(id))] }
