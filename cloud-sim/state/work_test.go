package state

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// embedded is a store on an embedded NATS server of its own, and a
// context that ends with the test or after testenv.Timeout.
func embedded(t *testing.T) (*Store, context.Context) {
	t.Helper()
	st, err := Open(t.Context(), Config{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ctx, cancel := context.WithTimeout(t.Context(), testenv.Timeout)
	t.Cleanup(cancel)
	return st, ctx
}

// TestEnqueueMany: a batch larger than a chunk of asynchronous publishes
// is queued whole, an id queued already (within the batch, or by an
// earlier batch) is handed out once, and a batch under a canceled context
// queues nothing and says so.
func TestEnqueueMany(t *testing.T) {
	st, ctx := embedded(t)

	var mu sync.Mutex
	got := map[string]int{} // guarded by mu: times each item was handed out
	stop, err := st.Consume(ctx, 8, func(_ context.Context, data []byte, _ bool) error {
		mu.Lock()
		got[string(data)]++
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	const n = 2500 // more than one chunk
	var items []WorkItem
	for i := range n {
		id := fmt.Sprintf("item-%d", i)
		items = append(items, WorkItem{ID: id, Data: []byte(id)})
	}
	items = append(items, items[7], items[1500]) // again, in the same batch
	if q, err := st.EnqueueMany(ctx, WorkSubjects, items); err != nil || q != len(items) {
		t.Fatalf("EnqueueMany of %d = %d, %v; want all queued", len(items), q, err)
	}
	// Again, as a scheduler does after an error: the server drops them.
	if q, err := st.EnqueueMany(ctx, WorkSubjects, items[:10]); err != nil || q != 10 {
		t.Fatalf("EnqueueMany of 10 queued already = %d, %v", q, err)
	}
	testenv.AwaitCount(t, "items handed out", n, func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	})
	mu.Lock()
	for id, times := range got {
		if times != 1 {
			t.Errorf("%s handed out %d times, want once", id, times)
		}
	}
	mu.Unlock()

	canceled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	more := []WorkItem{{ID: "late-1", Data: []byte("late-1")}, {ID: "late-2", Data: []byte("late-2")}}
	if q, err := st.EnqueueMany(canceled, WorkSubjects, more); err == nil || q != 0 {
		t.Errorf("EnqueueMany under a canceled context = %d, %v; want an error and none queued", q, err)
	}
}

// TestConsumeRetriesFailedItems: an item whose worker returns an error is
// handed out again within seconds (it was acknowledged and dropped, and a
// rollout's dispatch waited 75 s for the scheduler's requeue), until a
// worker succeeds; then it is not handed out again.
func TestConsumeRetriesFailedItems(t *testing.T) {
	st, ctx := embedded(t)

	const fails = 2
	var mu sync.Mutex
	tries := map[string]int{} // guarded by mu
	stop, err := st.Consume(ctx, 2, func(_ context.Context, data []byte, lastTry bool) error {
		mu.Lock()
		defer mu.Unlock()
		tries[string(data)]++
		if lastTry {
			t.Errorf("%s's delivery %d handed out as the last try; that is delivery %d", data, tries[string(data)], workTries)
		}
		if string(data) == "flaky" && tries["flaky"] <= fails {
			return errors.New("store unreachable")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	items := []WorkItem{{ID: "flaky", Data: []byte("flaky")}, {ID: "fine", Data: []byte("fine")}}
	if _, err := st.EnqueueMany(ctx, WorkSubjects, items); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the failing item handed out until it succeeds", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return tries["flaky"] == fails+1
	})
	// Acknowledged now: a further delivery would come within 4 s
	// (nextTry(3)); a later item's delivery shows the consumer moved on.
	if _, err := st.EnqueueMany(ctx, WorkSubjects, []WorkItem{{ID: "later", Data: []byte("later")}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "a later item handed out", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return tries["later"] == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if tries["flaky"] != fails+1 || tries["fine"] != 1 {
		t.Errorf("handed out %v; want flaky %d times, fine once", tries, fails+1)
	}
}

// TestNextTry: a failed item is handed out again a second after its
// first delivery, then two, doubling to at most 30 s, and dropped after
// its workTries-th.
func TestNextTry(t *testing.T) {
	tests := []struct {
		n     uint64
		after time.Duration
		again bool
	}{
		{0, time.Second, true},
		{1, time.Second, true},
		{2, 2 * time.Second, true},
		{3, 4 * time.Second, true},
		{5, 16 * time.Second, true},
		{6, 30 * time.Second, true},
		{workTries - 1, 30 * time.Second, true},
		{workTries, 30 * time.Second, false},
		{100, 30 * time.Second, false},
	}
	for _, tt := range tests {
		if after, again := nextTry(tt.n); after != tt.after || again != tt.again {
			t.Errorf("nextTry(%d) = %v, %v; want %v, %v", tt.n, after, again, tt.after, tt.again)
		}
	}
}
