package identity

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// fakeMirror records the calls as text and fails those refuse says.
type fakeMirror struct {
	mu     sync.Mutex
	calls  []string        // guarded by mu
	refuse map[string]bool // "put", "delete"
}

func (m *fakeMirror) Put(_ context.Context, tenant, id string, groups []string, password string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, fmt.Sprintf("put %s/%s %v %q", tenant, id, groups, password))
	if m.refuse["put"] {
		return errors.New(`dynsec createClient: Mosquitto says "nope"`)
	}
	return nil
}

func (m *fakeMirror) Delete(_ context.Context, tenant, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, fmt.Sprintf("delete %s/%s", tenant, id))
	if m.refuse["delete"] {
		return errors.New(`dynsec deleteClient: Mosquitto says "nope"`)
	}
	return nil
}

func mirrored(t *testing.T) (*Identities, *fakeMirror, *state.Store) {
	t.Helper()
	st, err := state.Open(t.Context(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	m := &fakeMirror{refuse: map[string]bool{}}
	ids, err := New(t.Context(), Config{Store: st, Mirror: m})
	if err != nil {
		t.Fatal(err)
	}
	return ids, m, st
}

// TestMirror: every change of an identity is made on the broker's copy
// first: provision with its password, a group change (not a label
// change), deprovision.
func TestMirror(t *testing.T) {
	ids, m, _ := mirrored(t)
	ctx := t.Context()
	if _, err := ids.ProvisionWith(ctx, "acme", "gw-1", Assignment{Groups: []string{"berlin"}}, "pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Assign(ctx, "acme", "gw-1", func(a *Assignment) { a.Labels = map[string]string{"site": "x"} }); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Assign(ctx, "acme", "gw-1", func(a *Assignment) { a.Groups = []string{"paris"} }); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.ProvisionWith(ctx, "acme", "gw-1", Assignment{}, "pw2"); err != nil {
		t.Fatal(err)
	}
	if err := ids.Deprovision(ctx, "acme", "gw-1"); err != nil {
		t.Fatal(err)
	}
	want := []string{`put acme/gw-1 [berlin] "pw"`, `put acme/gw-1 [paris] ""`, `put acme/gw-1 [paris] "pw2"`, `delete acme/gw-1`}
	if diff := cmp.Diff(want, m.calls); diff != "" {
		t.Errorf("broker calls (-want +got):\n%s", diff)
	}
}

// TestMirrorRefuses: a change the broker refuses is not made in the
// cloud either, and the error carries the broker's.
func TestMirrorRefuses(t *testing.T) {
	ids, m, _ := mirrored(t)
	ctx := t.Context()
	if _, err := ids.ProvisionWith(ctx, "acme", "gw-1", Assignment{Groups: []string{"berlin"}}, "pw"); err != nil {
		t.Fatal(err)
	}
	m.refuse["put"], m.refuse["delete"] = true, true
	for name, change := range map[string]func() error{
		"provision": func() error { _, err := ids.Provision(ctx, "acme", "gw-2", Assignment{}); return err },
		"group": func() error {
			_, err := ids.Assign(ctx, "acme", "gw-1", func(a *Assignment) { a.Groups = nil })
			return err
		},
		"deprovision": func() error { return ids.Deprovision(ctx, "acme", "gw-1") },
	} {
		if err := change(); err == nil || !strings.Contains(err.Error(), `Mosquitto says "nope"`) || !strings.Contains(err.Error(), "nothing changed in the cloud") {
			t.Errorf("%s: err = %v, want the broker's refusal", name, err)
		}
	}
	if _, ok := ids.Device("acme", "gw-2"); ok {
		t.Error("a gateway the broker refused is provisioned")
	}
	if d, ok := ids.Device("acme", "gw-1"); !ok || len(d.Groups) != 1 {
		t.Errorf("gw-1 after refusals = %+v, %v; want it unchanged", d, ok)
	}
}

// TestMirrorStoreFails: a new gateway the broker took but the store did
// not is deleted from the broker again, and the error says so.
func TestMirrorStoreFails(t *testing.T) {
	ids, m, st := mirrored(t)
	st.Close()
	_, err := ids.ProvisionWith(t.Context(), "acme", "gw-1", Assignment{}, "pw")
	if err == nil || !strings.Contains(err.Error(), "undone on the broker too") {
		t.Errorf("err = %v, want the store's error, undone on the broker", err)
	}
	if diff := cmp.Diff([]string{`put acme/gw-1 [] "pw"`, "delete acme/gw-1"}, m.calls); diff != "" {
		t.Errorf("broker calls (-want +got):\n%s", diff)
	}
}

// slowMirror is a Mirror whose Put takes a round trip: it waits until
// another Put is under way too (or a second has passed), and records how
// many were under way at once.
type slowMirror struct {
	inflight, most atomic.Int32
	puts           atomic.Int32
}

func (m *slowMirror) Put(context.Context, string, string, []string, string) error {
	n := m.inflight.Add(1)
	defer m.inflight.Add(-1)
	for {
		most := m.most.Load()
		if n <= most || m.most.CompareAndSwap(most, n) {
			break
		}
	}
	for deadline := time.Now().Add(time.Second); m.inflight.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	m.puts.Add(1)
	return nil
}

func (m *slowMirror) Delete(context.Context, string, string) error { return nil }

// TestProvisionManyPutsAtOnce: a batch of gateways is put on the broker
// several at once, at most mirrorConcurrency. (Before: one at a time, two
// round trips to Mosquitto's dynamic security each; 300 took over 20 s
// under make test's load, and TestScaleOut's fleet did not come up.)
func TestProvisionManyPutsAtOnce(t *testing.T) {
	st, err := state.Open(t.Context(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	m := &slowMirror{}
	ids, err := New(t.Context(), Config{Store: st, Mirror: m})
	if err != nil {
		t.Fatal(err)
	}
	gws := make([]Gateway, 40)
	for i := range gws {
		gws[i] = Gateway{ID: fmt.Sprintf("sim-%d", i+1)}
	}
	if err := ids.ProvisionMany(t.Context(), "sim", gws, NewPassword()); err != nil {
		t.Fatal(err)
	}
	if got := m.puts.Load(); got != int32(len(gws)) {
		t.Errorf("%d puts, want %d", got, len(gws))
	}
	if most := m.most.Load(); most < 2 || most > mirrorConcurrency {
		t.Errorf("at most %d puts at once, want 2 to %d", most, mirrorConcurrency)
	}
}
