package controller

import (
	"context"
	"io"
	"slices"
	"sync"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// LogsRequest asks one gateway for a deployment's output (the logs verb).
type LogsRequest struct {
	Tenant, Gateway, Deployment string
	// Service is one service of an application; empty: all of them.
	Service string
	// Tail is the last lines; 0: the agent's default (see fleetv1.Logs).
	Tail uint32
	// Since, when set, is the earliest instant of a line.
	Since time.Time
	// Follow streams new lines until Until (10 minutes at most), the
	// client's going away, or the container's removal.
	Follow bool
	Until  time.Time
}

// LogStreamKind is where a line was written.
type LogStreamKind int

// The streams of a container.
const (
	StreamUnknown LogStreamKind = iota
	Stdout
	Stderr
)

func (k LogStreamKind) String() string {
	switch k {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return "unknown"
}

// LogLine is one line of a container's output.
type LogLine struct {
	At      time.Time
	Service string
	Stream  LogStreamKind
	Text    string
}

// DropSource says who dropped lines.
type DropSource int

// Who dropped lines: the gateway's rate limit, or the cloud (a client
// reading too slowly for the stream's buffer, or chunks that never came).
const (
	DroppedByGateway DropSource = iota + 1
	DroppedByCloud
)

func (d DropSource) String() string {
	if d == DroppedByCloud {
		return "cloud"
	}
	return "gateway"
}

// LogDrop says that lines were dropped at this point of the stream.
type LogDrop struct {
	By    DropSource
	Lines uint64
	Bytes uint64
	// Chunks is how many chunks never arrived (By cloud): their lines are
	// not counted.
	Chunks uint64
}

// LogEnd is how a stream ended: Reason is the final chunk's end
// (COMPLETE, UNTIL, CANCELED, CONTAINER_GONE, ERROR), or the final reply's
// result when it came without a final chunk (SUCCEEDED, FAILED,
// REJECTED, EXPIRED), or TIMEOUT when the gateway did not answer in time,
// or GATEWAY_OFFLINE when it went offline.
type LogEnd struct {
	Reason  string
	Code    string
	Message string
}

// EndTimeout is LogEnd.Reason when the gateway did not answer in time.
const EndTimeout = "TIMEOUT"

// LogEvent is one event of a stream: exactly one field is set.
type LogEvent struct {
	Line    *LogLine
	Dropped *LogDrop
	End     *LogEnd
}

// Bounds of one stream's buffers.
const (
	// maxPendingChunks is how many chunks may wait for a missing one
	// before it is given up as lost.
	maxPendingChunks = 64
	// maxQueuedEvents is how many events may wait for a slow reader;
	// lines beyond are dropped and reported (DroppedByCloud).
	maxQueuedEvents = 10_000
)

// logOrder puts one stream's chunks back in sequence order (QoS 1 may
// duplicate them; a broker may reorder them) and queues their events for
// the reader. It holds no goroutine.
type logOrder struct {
	mu sync.Mutex
	// next is the sequence of the chunk to emit next; pending holds the
	// later ones that came first. Guarded by mu.
	next    uint64
	pending map[uint64]*fleetv1.LogChunk
	// queue is what Next has not taken yet; lost counts what its bound
	// dropped since the last notice. Guarded by mu.
	queue     []LogEvent
	lost      LogDrop
	ended     bool // the End is queued; guarded by mu
	endTaken  bool // Next returned the End; guarded by mu
	byGateway bool // the gateway ended it (final chunk or final reply); guarded by mu
	wake      chan struct{}
}

func newLogOrder() *logOrder {
	return &logOrder{pending: map[uint64]*fleetv1.LogChunk{}, wake: make(chan struct{}, 1)}
}

func (o *logOrder) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// chunk takes one chunk in; a duplicate or one after the end is ignored.
func (o *logOrder) chunk(c *fleetv1.LogChunk) {
	o.mu.Lock()
	defer o.signal()
	defer o.mu.Unlock()
	seq := c.GetSequence()
	if o.ended || seq < o.next {
		return
	}
	if _, dup := o.pending[seq]; dup {
		return
	}
	o.pending[seq] = c
	o.drain()
	if len(o.pending) > maxPendingChunks {
		// The missing chunk is lost: go on from the first one held.
		low := slices.Min(mapKeys(o.pending))
		o.push(LogEvent{Dropped: &LogDrop{By: DroppedByCloud, Chunks: low - o.next}})
		o.next = low
		o.drain()
	}
}

func mapKeys(m map[uint64]*fleetv1.LogChunk) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// drain emits the chunks held from next on. o.mu is held.
func (o *logOrder) drain() {
	for !o.ended {
		c, ok := o.pending[o.next]
		if !ok {
			return
		}
		delete(o.pending, o.next)
		o.next++
		o.emit(c)
	}
}

// emit queues one chunk's events. o.mu is held.
func (o *logOrder) emit(c *fleetv1.LogChunk) {
	for _, l := range c.GetLines() {
		o.push(LogEvent{Line: &LogLine{At: l.GetTimestamp().AsTime(), Service: l.GetService(), Stream: streamOf(l.GetStream()), Text: l.GetText()}})
	}
	if c.GetDroppedLines() > 0 || c.GetDroppedBytes() > 0 {
		o.push(LogEvent{Dropped: &LogDrop{By: DroppedByGateway, Lines: c.GetDroppedLines(), Bytes: c.GetDroppedBytes()}})
	}
	if c.GetFinal() {
		end := &LogEnd{Reason: c.GetEnded().String(), Message: c.GetMessage()}
		if c.GetCode() != fleetv1.Reply_OK {
			end.Code = c.GetCode().String()
		}
		o.byGateway = true
		o.end(end)
	}
}

func streamOf(s fleetv1.LogLine_Stream) LogStreamKind {
	switch s {
	case fleetv1.LogLine_STDOUT:
		return Stdout
	case fleetv1.LogLine_STDERR:
		return Stderr
	}
	return StreamUnknown
}

// push queues ev, or counts it as lost when the queue is full. o.mu is
// held.
func (o *logOrder) push(ev LogEvent) {
	if len(o.queue) >= maxQueuedEvents {
		switch {
		case ev.Line != nil:
			o.lost.Lines++
			o.lost.Bytes += uint64(len(ev.Line.Text))
		case ev.Dropped != nil:
			o.lost.Lines += ev.Dropped.Lines
			o.lost.Bytes += ev.Dropped.Bytes
			o.lost.Chunks += ev.Dropped.Chunks
		}
		return
	}
	o.flushLost()
	o.queue = append(o.queue, ev)
}

// flushLost queues the notice of what the queue's bound dropped. o.mu is
// held.
func (o *logOrder) flushLost() {
	if o.lost != (LogDrop{}) {
		d := o.lost
		d.By = DroppedByCloud
		o.queue = append(o.queue, LogEvent{Dropped: &d})
		o.lost = LogDrop{}
	}
}

// end queues the End (beyond the queue's bound). o.mu is held.
func (o *logOrder) end(e *LogEnd) {
	if o.ended {
		return
	}
	o.flushLost()
	o.queue = append(o.queue, LogEvent{End: e})
	o.ended, o.pending = true, nil
}

// finish ends the stream with e after emitting, in order, the chunks
// held (a gap becomes a drop notice), unless it has ended; byGateway says
// whether the gateway ended it (its final reply).
func (o *logOrder) finish(e *LogEnd, byGateway bool) {
	o.mu.Lock()
	defer o.signal()
	defer o.mu.Unlock()
	if o.ended {
		return
	}
	keys := mapKeys(o.pending)
	slices.Sort(keys)
	for _, k := range keys {
		if o.ended {
			break
		}
		if k > o.next {
			o.push(LogEvent{Dropped: &LogDrop{By: DroppedByCloud, Chunks: k - o.next}})
		}
		c := o.pending[k]
		delete(o.pending, k)
		o.next = k + 1
		o.emit(c)
	}
	if !o.ended {
		o.byGateway = o.byGateway || byGateway
		o.end(e)
	}
}

// endedByGateway reports whether the gateway ended the stream itself, so
// that no cancel-logs is needed.
func (o *logOrder) endedByGateway() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byGateway
}

// Next returns the events queued, in order, waiting for one until ctx
// ends; io.EOF once the End was returned.
func (o *logOrder) Next(ctx context.Context) ([]LogEvent, error) {
	for {
		o.mu.Lock()
		if len(o.queue) == 0 {
			o.flushLost() // the reader caught up with a full queue
		}
		if o.endTaken {
			o.mu.Unlock()
			return nil, io.EOF
		}
		if len(o.queue) > 0 {
			out := o.queue
			o.queue = nil
			o.endTaken = o.ended && out[len(out)-1].End != nil
			o.mu.Unlock()
			return out, nil
		}
		o.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-o.wake:
		}
	}
}
