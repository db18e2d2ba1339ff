package identity

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
)

func TestAuthenticate(t *testing.T) {
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ids, err := New(context.Background(), Config{Store: st, ControllerPassword: []byte("ctrl-secret")})
	if err != nil {
		t.Fatal(err)
	}
	pw, err := ids.Provision(context.Background(), "acme", "gw-1", Assignment{Groups: []string{"berlin"}})
	if err != nil {
		t.Fatal(err)
	}
	gw := broker.Identity{Tenant: "acme", Gateway: "gw-1", Groups: []string{"berlin"}}
	tests := []struct {
		name               string
		clientID, username string
		password           string
		want               broker.Identity
		wantDenied         bool // ErrDenied; other errors for a wrong client id
		wantErr            bool
	}{
		{"gateway", "acme/gw-1", "acme/gw-1", pw, gw, false, false},
		{"wrong password", "acme/gw-1", "acme/gw-1", "nope", broker.Identity{}, true, true},
		{"unknown gateway", "acme/gw-2", "acme/gw-2", pw, broker.Identity{}, true, true},
		{"another client id", "acme/gw-x", "acme/gw-1", pw, broker.Identity{}, false, true},
		{"controller", "controller", ControllerUser, "ctrl-secret", broker.Identity{Controller: true}, false, false},
		{"controller, wrong password", "controller", ControllerUser, "nope", broker.Identity{}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ids.Authenticate(tt.clientID, tt.username, []byte(tt.password))
			if (err != nil) != tt.wantErr || errors.Is(err, broker.ErrDenied) != tt.wantDenied {
				t.Fatalf("error %v, want error %v (denied %v)", err, tt.wantErr, tt.wantDenied)
			}
			if got.Tenant != tt.want.Tenant || got.Gateway != tt.want.Gateway || got.Controller != tt.want.Controller || !slices.Equal(got.Groups, tt.want.Groups) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	// A restarted cloud knows the identities and the restored sessions.
	again, err := New(context.Background(), Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	restored := []struct {
		clientID, username string
		want               broker.Identity
		ok                 bool
	}{
		{"acme/gw-1", "acme/gw-1", gw, true},
		{"controller", ControllerUser, broker.Identity{Controller: true}, true},
		// Another replica's session (--controller-id): the broker restarted
		// with it offline, and dropped what came for it until it was back.
		{"controller-b", ControllerUser, broker.Identity{Controller: true}, true},
		{"controller-b", "acme/gw-1", broker.Identity{}, false},
		{"acme/gw-2", "acme/gw-2", broker.Identity{}, false},
	}
	for _, r := range restored {
		id, ok := again.Identify(r.clientID, r.username)
		if ok != r.ok || id.Tenant != r.want.Tenant || id.Gateway != r.want.Gateway || id.Controller != r.want.Controller {
			t.Errorf("Identify(%q, %q) after a reload = %+v, %v; want %+v, %v", r.clientID, r.username, id, ok, r.want, r.ok)
		}
	}
	if _, err := ids.Provision(context.Background(), "acme", "bad id!", Assignment{}); err == nil {
		t.Error("Provision with a bad id: no error")
	}
}

// TestAssignAndDeprovision: a new password keeps the groups and labels; an
// assignment changes them; bad labels name the field; a deprovisioned
// gateway can no longer log in, nor be identified.
func TestAssignAndDeprovision(t *testing.T) {
	ctx := context.Background()
	st, err := state.Open(ctx, state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ids, err := New(ctx, Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	old, err := ids.Provision(ctx, "acme", "gw-1", Assignment{Groups: []string{"berlin"}, Labels: map[string]string{"site": "berlin"}})
	if err != nil {
		t.Fatal(err)
	}
	pw, err := ids.Provision(ctx, "acme", "gw-1", Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Authenticate("acme/gw-1", "acme/gw-1", []byte(old)); !errors.Is(err, broker.ErrDenied) {
		t.Errorf("old password after a new one: error %v, want ErrDenied", err)
	}
	if groups, labels, ok := ids.Assigned("acme", "gw-1"); !ok || !slices.Equal(groups, []string{"berlin"}) || labels["site"] != "berlin" {
		t.Errorf("after a new password: groups %v labels %v, want them kept", groups, labels)
	}
	if _, err := ids.Assign(ctx, "acme", "gw-1", func(a *Assignment) { a.Labels = map[string]string{"site": "paris", "tier": "canary"} }); err != nil {
		t.Fatal(err)
	}
	if groups, labels, _ := ids.Assigned("acme", "gw-1"); !slices.Equal(groups, []string{"berlin"}) || labels["site"] != "paris" || len(labels) != 2 {
		t.Errorf("after Assign(labels): groups %v labels %v", groups, labels)
	}
	for _, tt := range []struct {
		name      string
		a         Assignment
		wantField string
	}{
		{"key with a space", Assignment{Labels: map[string]string{"a b": "x"}}, "labels"},
		{"key with =", Assignment{Labels: map[string]string{"a=b": "x"}}, "labels"},
		{"value with a comma", Assignment{Labels: map[string]string{"site": "a,b"}}, "labels.site"},
		{"bad group", Assignment{Groups: []string{"a/b"}}, "groups[0]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ids.Assign(ctx, "acme", "gw-1", func(a *Assignment) { *a = tt.a })
			var fe *errdefs.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.wantField {
				t.Errorf("error %v, want one naming %s", err, tt.wantField)
			}
		})
	}
	if _, err := ids.Assign(ctx, "acme", "gw-2", func(a *Assignment) { a.Groups = []string{"x"} }); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Assign to an unknown gateway: error %v, want not found", err)
	}
	if err := ids.Deprovision(ctx, "acme", "gw-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Authenticate("acme/gw-1", "acme/gw-1", []byte(pw)); !errors.Is(err, broker.ErrDenied) {
		t.Errorf("after deprovision: error %v, want ErrDenied", err)
	}
	again, err := New(ctx, Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := again.Identify("acme/gw-1", "acme/gw-1"); ok {
		t.Error("a reloaded cloud still identifies the deprovisioned gateway")
	}
	if err := ids.Deprovision(ctx, "acme", "gw-1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("deprovision twice: error %v, want not found", err)
	}
}
