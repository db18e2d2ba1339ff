package identity

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// fakeMirror records the calls as text and fails those refuse says.
type fakeMirror struct {
	calls  []string
	refuse map[string]bool // "put", "delete"
}

func (m *fakeMirror) Put(_ context.Context, tenant, id string, groups []string, password string) error {
	m.calls = append(m.calls, fmt.Sprintf("put %s/%s %v %q", tenant, id, groups, password))
	if m.refuse["put"] {
		return errors.New(`dynsec createClient: Mosquitto says "nope"`)
	}
	return nil
}

func (m *fakeMirror) Delete(_ context.Context, tenant, id string) error {
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
