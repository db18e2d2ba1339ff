package broker

import (
	"errors"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainOp is a retained message to write, or with r == -1 or no payload
// a topic whose retained message is to be deleted.
type retainOp struct {
	cl *mqtt.Client
	pk packets.Packet
	r  int64
}

// retainBatch is the retained messages that arrived while the previous
// batch was being written: the latest per topic. done is closed once the
// batch is written; err then says whether it failed.
type retainBatch struct {
	ops  map[string]retainOp
	done chan struct{}
	err  error
}

func newRetainBatch() *retainBatch {
	return &retainBatch{ops: map[string]retainOp{}, done: make(chan struct{})}
}

// errRetainStopped: a retained message arrived after the store stopped.
var errRetainStopped = errors.New("retained message after the store stopped")

// retainWriter writes retained messages in group commits: one goroutine
// writes a batch (one transaction) while the next collects what arrives
// meanwhile, so that waiting for one's own message to be written costs one
// transaction under no load and a share of one under load, never a
// transaction per message.
type retainWriter struct {
	write func(ops map[string]retainOp) error

	mu      sync.Mutex
	next    *retainBatch // guarded by mu
	stopped bool         // guarded by mu
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

// startRetainWriter starts writing batches with write.
func startRetainWriter(write func(map[string]retainOp) error) *retainWriter {
	w := &retainWriter{write: write, next: newRetainBatch(), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// add queues op in the next batch, which it returns: its done is closed
// when op (or a later message of the same topic) is written.
func (w *retainWriter) add(op retainOp) *retainBatch {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		b := newRetainBatch()
		b.err = errRetainStopped
		close(b.done)
		return b
	}
	b := w.next
	b.ops[op.pk.TopicName] = op
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default: // a flush is due already and will take op
	}
	return b
}

func (w *retainWriter) run() {
	defer close(w.done)
	for {
		select {
		case <-w.kick:
			w.flush()
		case <-w.stop:
			w.flush()
			return
		}
	}
}

// flush writes the batch collected so far.
func (w *retainWriter) flush() {
	w.mu.Lock()
	b := w.next
	w.next = newRetainBatch()
	w.mu.Unlock()
	if len(b.ops) > 0 {
		b.err = w.write(b.ops)
	}
	close(b.done)
}

// Stop writes what was added before it and stops; what is added after
// fails with errRetainStopped.
func (w *retainWriter) Stop() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	w.stopped = true
	w.mu.Unlock()
	close(w.stop)
	<-w.done
}
