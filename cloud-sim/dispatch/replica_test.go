package dispatch

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestReplyBeforeTheRecord: with replicas sharing ingest, a gateway's
// reply can reach a replica before the record of its command, written
// by the replica that sent it, does; the reply is kept, applied once the
// record arrives, written, and seen by the sender.
func TestReplyBeforeTheRecord(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var late atomic.Int32
	watching := func(fn func(Command)) *Dispatcher {
		d, err := New(Config{Store: st, Cipher: plain{}, Late: fn})
		if err != nil {
			t.Fatal(err)
		}
		stop, err := d.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		return d
	}
	sender := watching(nil)
	other := watching(func(c Command) { late.Add(1) })

	b := &Batch{ID: NewID("b"), Verb: "rebirth", Tenant: "acme", CreatedAt: time.Now()}
	job := NewJob(b, "acme", "gw-1", true, &fleetv1.Command{Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}, 0)
	id := job.Command.ID
	if _, ok := other.Reply("acme", "gw-1", &fleetv1.Reply{CommandId: id, Result: fleetv1.Reply_SUCCEEDED}, time.Now()); ok {
		t.Fatal("a reply to an unknown command matched")
	}
	if err := sender.Record(ctx, b, []Job{job}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := other.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if c, ok := sender.Command(id); ok && c.State == Succeeded && late.Load() == 1 {
			return
		}
		if time.Now().After(deadline) {
			c, _ := sender.Command(id)
			t.Fatalf("the sender's record: %+v; late replies applied: %d", c, late.Load())
		}
		time.Sleep(10 * time.Millisecond) // polling a condition
	}
}
