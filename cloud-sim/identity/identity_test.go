package identity

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/state"
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
	pw, err := ids.Provision(context.Background(), "acme", "gw-1", []string{"berlin"})
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
	if id, ok := again.Identify("acme/gw-1"); !ok || id.Gateway != "gw-1" {
		t.Errorf("Identify(acme/gw-1) after a reload = %+v, %v; want gw-1", id, ok)
	}
	if id, ok := again.Identify("controller"); !ok || !id.Controller {
		t.Errorf("Identify(controller) = %+v, %v; want the controller", id, ok)
	}
	if _, err := ids.Provision(context.Background(), "acme", "bad id!", nil); err == nil {
		t.Error("Provision with a bad id: no error")
	}
}
