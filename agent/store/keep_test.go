package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/store"
)

// TestKeepAtLeast: ids received within the kept window survive the count
// bound and an age bound shorter than the window; older ones go as before.
func TestKeepAtLeast(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, store.Config{MaxCommands: 2, MaxCommandAge: time.Hour, Now: c.now})
	s.KeepAtLeast(24 * time.Hour)
	done := func(id string) {
		t.Helper()
		if _, _, err := s.Begin(store.Command{ID: id, Verb: "rebirth"}); err != nil {
			t.Fatal(err)
		}
		s.Finish(id, []byte("r"))
		s.MarkDelivered(id)
	}
	for i := range 5 {
		done(fmt.Sprint("a", i))
		c.t = c.t.Add(2 * time.Hour)
	}
	for i := range 5 {
		if _, ok, _ := s.Get(fmt.Sprint("a", i)); !ok {
			t.Errorf("a%d forgotten within the kept window", i)
		}
	}
	c.t = c.t.Add(24 * time.Hour)
	done("b")
	if _, ok, _ := s.Get("a0"); ok {
		t.Error("a0 kept beyond the window")
	}
}
