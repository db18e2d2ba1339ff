package regauth_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/fleet-agent/fleet/agent/regauth"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestInsecureCredential: a credential that says insecure is honoured only
// for a registry the local policy (--allow-insecure-registry) lists; for
// another it is refused with POLICY_DENIED naming the setting; with
// requireTls it is invalid input.
func TestInsecureCredential(t *testing.T) {
	const host = "registry.plant.example:5000"
	basic := &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "u", Password: "p"}}
	tests := []struct {
		name       string
		allow      []string
		cred       *fleetv1.Credential
		wantSetErr string // field of the refusal
		wantCode   fleetv1.Reply_Code
		wantInsec  bool
	}{
		{name: "allowed", allow: []string{host}, cred: &fleetv1.Credential{Registry: host, Kind: basic, Insecure: true}, wantInsec: true},
		{name: "not allowed", allow: []string{"other:5000"}, cred: &fleetv1.Credential{Registry: host, Kind: basic, Insecure: true}, wantCode: fleetv1.Reply_POLICY_DENIED},
		{name: "no setting", cred: &fleetv1.Credential{Registry: host, Kind: basic, Insecure: true}, wantCode: fleetv1.Reply_POLICY_DENIED},
		{name: "not insecure", allow: []string{host}, cred: &fleetv1.Credential{Registry: host, Kind: basic}},
		{name: "insecure and requireTls", allow: []string{host}, cred: &fleetv1.Credential{Registry: host, Kind: basic, Insecure: true, RequireTls: true},
			wantSetErr: "credentials[0].insecure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKeychain(t, func(c *regauth.KeychainConfig) {
				c.AllowInsecure = tt.allow
				c.Insecure = func(context.Context, string) (bool, error) { return false, nil } // the engine verifies TLS
			})
			err := set(t, k, tt.cred)
			if tt.wantSetErr != "" {
				fe, ok := errors.AsType[*errdefs.FieldError](err)
				if !ok || fe.Field != tt.wantSetErr {
					t.Fatalf("Set = %v, want a field error on %s", err, tt.wantSetErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			acc, err := k.Remote(context.Background(), host+"/team/app:1")
			if errdefs.Code(err) != tt.wantCode {
				t.Fatalf("Remote = %v, want code %v", err, tt.wantCode)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "--allow-insecure-registry") {
					t.Errorf("refusal %q does not name --allow-insecure-registry", err)
				}
				return
			}
			if acc.Insecure != tt.wantInsec || acc.Transport.TLSClientConfig.InsecureSkipVerify != tt.wantInsec {
				t.Errorf("Access insecure %v, skip verify %v; want %v", acc.Insecure, acc.Transport.TLSClientConfig.InsecureSkipVerify, tt.wantInsec)
			}
		})
	}
}
