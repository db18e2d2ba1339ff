package state

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestEnqueueMany: a batch larger than a chunk of asynchronous publishes
// is queued whole, an id queued already (within the batch, or by an
// earlier batch) is handed out once, and a batch under a canceled context
// queues nothing and says so.
func TestEnqueueMany(t *testing.T) {
	st, err := Open(t.Context(), Config{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()

	var mu sync.Mutex
	got := map[string]int{} // guarded by mu: times each item was handed out
	stop, err := st.Consume(ctx, 8, func(_ context.Context, data []byte) {
		mu.Lock()
		got[string(data)]++
		mu.Unlock()
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
