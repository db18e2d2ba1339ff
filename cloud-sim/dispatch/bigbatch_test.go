package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// A request to 25,000 gateways, each sent its credentials and then a
// command, is 50,000 commands: its batch record listed their ids (21 bytes
// each) and outgrew NATS's 1 MiB message, and the whole request was
// refused ("maximum payload exceeded"; docs/scaling.md said so as what
// breaks first). The stored batch now lists none; a dispatcher that loads
// it lists its commands again from the commands that name it, each
// gateway's credentials before its command.
func TestBatchOfFiftyThousandCommands(t *testing.T) {
	const gateways = 25000
	st := openStore(t)
	d := newDispatcher(t, st)
	b := &Batch{ID: NewID("b"), Verb: "rebirth", Tenant: "acme", CreatedAt: time.Now()}
	var jobs []Job
	for i := range gateways {
		gw := fmt.Sprintf("gw-%d", i)
		jobs = append(jobs,
			NewJob(b, "acme", gw, true, &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{}}}, 0),
			NewJob(b, "acme", gw, true, &fleetv1.Command{Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}, 0))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Record(ctx, b, jobs); err != nil {
		t.Fatalf("recording %d commands: %v", len(jobs), err)
	}

	again := newDispatcher(t, st) // another replica, or a restart
	v, ok := again.Batch(b.ID)
	if !ok {
		t.Fatal("the batch is not loaded")
	}
	if len(v.Commands) != 2*gateways || v.Counts[Pending] != 2*gateways {
		t.Fatalf("loaded batch has %d commands (%v); want %d pending", len(v.Commands), v.Counts, 2*gateways)
	}
	last := map[string]string{} // gateway → verb of its last command listed
	for _, c := range v.Commands {
		if c.Verb == string(topic.Rebirth) && last[c.Gateway] != string(topic.SetCredentials) {
			t.Fatalf("%s: its rebirth is listed before its credentials", c.Gateway)
		}
		last[c.Gateway] = c.Verb
	}
	if len(last) != gateways {
		t.Errorf("commands of %d gateways listed; want %d", len(last), gateways)
	}
}
