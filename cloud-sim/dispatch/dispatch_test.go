package dispatch

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// fakePublisher records what is published.
type fakePublisher struct {
	mu   sync.Mutex
	sent []string // "tenant/gateway/command id"
	err  error
}

func (p *fakePublisher) Publish(_ context.Context, tenant, gw string, cmd *fleetv1.Command) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.sent = append(p.sent, tenant+"/"+gw+"/"+cmd.GetId())
	return nil
}

func (p *fakePublisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.sent...)
}

type plain struct{}

func (plain) Encrypt(p []byte) []byte          { return p }
func (plain) Decrypt(p []byte) ([]byte, error) { return p, nil }

func newDispatcher(t *testing.T, st *state.Store) *Dispatcher {
	t.Helper()
	d, err := New(Config{Store: st, Cipher: plain{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

func openStore(t *testing.T) *state.Store {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// sendRebirth records and publishes a rebirth to gw-1 and gw-2 of acme.
func sendRebirth(t *testing.T, d *Dispatcher) *Batch {
	t.Helper()
	b := &Batch{ID: NewID("b"), Verb: "rebirth", Tenant: "acme", CreatedAt: time.Now()}
	var jobs []Job
	for _, gw := range []string{"gw-1", "gw-2"} {
		jobs = append(jobs, NewJob(b, "acme", gw, true, &fleetv1.Command{Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}, 0))
	}
	if err := d.Record(context.Background(), b, jobs); err != nil {
		t.Fatal(err)
	}
	d.Publish(context.Background(), jobs, nil)
	return b
}

func TestReplyMatching(t *testing.T) {
	d := newDispatcher(t, openStore(t))
	d.Start(&fakePublisher{})
	defer d.Close()
	b := sendRebirth(t, d)
	c1, c2 := b.Commands[0], b.Commands[1]
	tests := []struct {
		name      string
		gw        string
		rep       *fleetv1.Reply
		wantMatch bool
		wantState State // of c1
	}{
		{"another gateway's reply is not matched", "gw-2", &fleetv1.Reply{CommandId: c1, Result: fleetv1.Reply_SUCCEEDED}, false, Pending},
		{"unknown command", "gw-1", &fleetv1.Reply{CommandId: "c-nope", Result: fleetv1.Reply_SUCCEEDED}, false, Pending},
		{"accepted", "gw-1", &fleetv1.Reply{CommandId: c1, Result: fleetv1.Reply_ACCEPTED}, true, Accepted},
		{"succeeded", "gw-1", &fleetv1.Reply{CommandId: c1, Result: fleetv1.Reply_SUCCEEDED}, true, Succeeded},
		{"a duplicate after the final reply", "gw-1", &fleetv1.Reply{CommandId: c1, Result: fleetv1.Reply_FAILED}, false, Succeeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, matched := d.Reply("acme", tt.gw, tt.rep, time.Now())
			if matched != tt.wantMatch {
				t.Errorf("matched = %v, want %v", matched, tt.wantMatch)
			}
			if cmd, _ := d.Command(c1); cmd.State != tt.wantState {
				t.Errorf("state = %s, want %s", cmd.State, tt.wantState)
			}
		})
	}
	d.Reply("acme", "gw-2", &fleetv1.Reply{CommandId: c2, Result: fleetv1.Reply_RESULT_UNSPECIFIED, Code: fleetv1.Reply_INTERNAL}, time.Now())
	v, _ := d.Batch(b.ID)
	if !v.Done || v.Failed != 1 || v.Counts[Succeeded] != 1 || v.Counts[Failed] != 1 {
		t.Errorf("batch done=%v failed=%d counts=%v, want done, 1 failed, 1 succeeded", v.Done, v.Failed, v.Counts)
	}
}

// TestResendOnStart: a dispatcher started on the store another left
// publishes its unfinished commands again, in order, and no finished one.
func TestResendOnStart(t *testing.T) {
	st := openStore(t)
	first := newDispatcher(t, st)
	first.Start(&fakePublisher{})
	b := sendRebirth(t, first)
	first.Reply("acme", "gw-1", &fleetv1.Reply{CommandId: b.Commands[0], Result: fleetv1.Reply_SUCCEEDED}, time.Now())
	if err := first.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	first.Close()

	second := newDispatcher(t, st)
	pub := &fakePublisher{}
	second.Start(pub)
	deadline := time.Now().Add(10 * time.Second)
	for len(pub.published()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling for the background resend
	}
	second.Close()
	want := "acme/gw-2/" + b.Commands[1]
	if got := pub.published(); len(got) != 1 || got[0] != want {
		t.Errorf("resent %v, want [%s]", got, want)
	}
}

func TestCommands(t *testing.T) {
	hub := new(changes.Hub)
	d, err := New(Config{Store: openStore(t), Cipher: plain{}, Changes: hub})
	if err != nil {
		t.Fatal(err)
	}
	d.Start(&fakePublisher{})
	defer d.Close()
	b1 := sendRebirth(t, d)
	b2 := &Batch{ID: NewID("b"), Verb: "restart", Tenant: "beta", CreatedAt: time.Now().Add(time.Second)}
	j := NewJob(b2, "beta", "gw-9", true, &fleetv1.Command{Body: &fleetv1.Command_Restart{Restart: &fleetv1.DeploymentRef{Name: "web"}}}, 0)
	if err := d.Record(context.Background(), b2, []Job{j}); err != nil {
		t.Fatal(err)
	}
	gw1 := d.mustBatch(t, b1.ID).Commands[0]
	d.Reply("acme", "gw-1", &fleetv1.Reply{CommandId: gw1.ID, Result: fleetv1.Reply_FAILED, Code: fleetv1.Reply_NOT_FOUND, Message: "no"}, time.Now())
	tests := []struct {
		name string
		f    Filter
		lim  int
		want []string // gateways, newest first; gw-1 and gw-2's were sent at once
	}{
		{"all", Filter{}, 0, []string{"gw-9", "gw-2", "gw-1"}},
		{"limit", Filter{}, 1, []string{"gw-9"}},
		{"tenant", Filter{Tenant: "acme"}, 0, []string{"gw-2", "gw-1"}},
		{"gateway", Filter{Gateway: "gw-1"}, 0, []string{"gw-1"}},
		{"verb", Filter{Verb: "restart"}, 0, []string{"gw-9"}},
		{"state", Filter{State: Failed}, 0, []string{"gw-1"}},
		{"code", Filter{Code: "NOT_FOUND"}, 0, []string{"gw-1"}},
		{"batch", Filter{Batch: b1.ID}, 0, []string{"gw-2", "gw-1"}},
		{"none", Filter{Tenant: "nope"}, 0, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := []string{}
			list := d.Commands(tt.f, tt.lim)
			for i, c := range list {
				got = append(got, c.Gateway)
				if i > 0 && c.SentAt.After(list[i-1].SentAt) {
					t.Errorf("%s sent after %s, listed later", c.ID, list[i-1].ID)
				}
			}
			if tied := slices.Index(got, "gw-2"); tied > 0 && got[tied-1] == "gw-1" {
				got[tied-1], got[tied] = got[tied], got[tied-1] // the ids decide: either order
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	fin := hub.Recent(changes.Filter{Kind: "command.finished"}, 0)
	if len(fin) != 1 || fin[0].Severity != changes.Error {
		t.Errorf("command.finished changes %+v, want one of severity error", fin)
	}
}

func (d *Dispatcher) mustBatch(t *testing.T, id string) *BatchView {
	t.Helper()
	v, ok := d.Batch(id)
	if !ok {
		t.Fatalf("no batch %s", id)
	}
	return v
}
