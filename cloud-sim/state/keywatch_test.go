package state

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// Watch and Each through the store's own watches (keywatch.go) deliver
// what nats.go's KV watch did: Watch returns once fn has seen the latest
// value of each key (a deletion too), then the changes follow in order;
// Each lists the keys that hold a value, once each; an empty bucket is
// loaded at once.
func TestWatchAndEachOnEmbedded(t *testing.T) {
	st, ctx := embedded(t)

	var mu sync.Mutex
	var got []string // guarded by mu: "key value" or "key deleted"
	record := func(e Entry) {
		mu.Lock()
		defer mu.Unlock()
		if e.Deleted {
			got = append(got, e.Key+" deleted")
		} else {
			got = append(got, fmt.Sprintf("%s %s", e.Key, e.Value))
		}
	}
	stop, err := st.Watch(ctx, Meta, record)
	if err != nil {
		t.Fatalf("watch of an empty bucket: %v", err)
	}
	stop()

	for _, kv := range []struct {
		key string
		v   int
	}{{"a", 1}, {"b", 1}, {"a", 2}} {
		if err := st.Put(ctx, Meta, kv.key, kv.v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Delete(ctx, Meta, "b"); err != nil {
		t.Fatal(err)
	}
	got = nil
	stop, err = st.Watch(ctx, Meta, record)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	mu.Lock()
	loaded := slices.Clone(got)
	mu.Unlock()
	if want := []string{"a 2", "b deleted"}; !slices.Equal(loaded, want) {
		t.Errorf("Watch returned having seen %q; want %q", loaded, want)
	}
	if err := st.Put(ctx, Meta, "c", 1); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, Meta, "a"); err != nil {
		t.Fatal(err)
	}
	want := []string{"a 2", "b deleted", "c 1", "a deleted"}
	testenv.Eventually(t, fmt.Sprintf("the watch sees %q", want), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(got, want)
	})

	var keys []string
	if err := st.Each(ctx, Meta, func(k string, _ []byte) error { keys = append(keys, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys, []string{"c"}) {
		t.Errorf("Each listed %q; want [c]: a and b are deleted", keys)
	}
}
