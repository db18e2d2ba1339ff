package state

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// TestEachWhileWritten: a listing of a bucket whose keys are written
// again while it runs (a follower reloading the rollouts while the leader
// flushes its gateways' records) lists every key.
func TestEachWhileWritten(t *testing.T) {
	st, ctx := embedded(t)
	const keys = 300
	batch := map[string]any{}
	for i := range keys {
		batch[fmt.Sprintf("r.gw-%03d", i)] = map[string]int{"n": 0}
	}
	if err := st.PutMany(ctx, Rollouts, batch); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	var writers sync.WaitGroup
	writers.Add(1)
	go func() { // every key written again, over and over, in batches
		defer writers.Done()
		for n := 1; wctx.Err() == nil; n++ {
			b := map[string]any{}
			for i := range keys {
				b[fmt.Sprintf("r.gw-%03d", i)] = map[string]int{"n": n}
			}
			_ = st.PutMany(wctx, Rollouts, b)
		}
	}()
	defer func() { stop(); writers.Wait() }()
	for round := range 30 {
		listed := 0
		if _, err := st.EachAt(ctx, Rollouts, func(string, []byte) error { listed++; return nil }); err != nil {
			t.Fatal(err)
		}
		if listed != keys {
			t.Fatalf("listing %d listed %d keys of %d", round, listed, keys)
		}
	}
}
