package credential_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func basicCred(registry, user, password string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: user, Password: password}}}
}

// TestCheck: the registry check names exactly what failed, and how far it
// got, for each kind of failure.
func TestCheck(t *testing.T) {
	ca, err := registry.NewCA("private CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	public := testimage.NewRegistry(t)
	basicReg := testimage.NewRegistry(t, testimage.WithBasicAuth("robot", "pw"))
	hub := testimage.NewRegistry(t, testimage.WithAuth(&registry.Bearer{Users: map[string]string{"alice": "pat"}}))
	tlsReg := testimage.NewRegistry(t, testimage.WithConfig(func(c *registry.Config) { c.Certificate = &cert }))
	for _, r := range []*testimage.Registry{public, basicReg, hub, tlsReg} {
		r.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name     string
		image    string
		cred     *fleetv1.Credential
		secure   bool // the engine verifies TLS for loopback (as for any non-insecure registry)
		code     fleetv1.Reply_Code
		want     *fleetv1.RegistryCheck
		contains string
	}{
		{name: "invalid reference", image: "Team/Web:1", code: fleetv1.Reply_INVALID_ARGUMENT, want: &fleetv1.RegistryCheck{}, contains: "image"},
		{name: "public registry", image: public.Host + "/team/app:1",
			want: &fleetv1.RegistryCheck{Reachable: true, Authenticated: true, ImageFound: true}},
		{name: "unreachable", image: closed + "/team/app:1", code: fleetv1.Reply_REGISTRY_UNREACHABLE,
			want: &fleetv1.RegistryCheck{}, contains: closed},
		{name: "no credential", image: basicReg.Host + "/team/app:1", code: fleetv1.Reply_UNAUTHENTICATED,
			want: &fleetv1.RegistryCheck{Reachable: true}, contains: "none stored"},
		{name: "wrong password", image: basicReg.Host + "/team/app:1", cred: basicCred(basicReg.Host, "robot", "nope"),
			code: fleetv1.Reply_UNAUTHENTICATED, want: &fleetv1.RegistryCheck{Reachable: true}, contains: "basic credential for " + basicReg.Host},
		{name: "image not found", image: basicReg.Host + "/team/other:1", cred: basicCred(basicReg.Host, "robot", "pw"),
			code: fleetv1.Reply_NOT_FOUND, want: &fleetv1.RegistryCheck{Reachable: true, Authenticated: true}},
		{name: "docker hub style bearer realm", image: hub.Host + "/team/app:1", cred: basicCred(hub.Host, "alice", "pat"),
			want: &fleetv1.RegistryCheck{Reachable: true, Authenticated: true, ImageFound: true}},
		{name: "private CA not installed", image: tlsReg.Host + "/team/app:1", secure: true, code: fleetv1.Reply_TLS_FAILURE,
			want: &fleetv1.RegistryCheck{Reachable: true}, contains: "caCertificate"},
		{name: "private CA installed", image: tlsReg.Host + "/team/app:1", secure: true,
			cred: &fleetv1.Credential{Registry: tlsReg.Host, CaCertificate: ca.PEM(), Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}},
			want: &fleetv1.RegistryCheck{Reachable: true, TlsVerified: true, Authenticated: true, ImageFound: true}},
		{name: "plain HTTP, engine requires TLS", image: public.Host + "/team/app:1", secure: true, code: fleetv1.Reply_TLS_FAILURE,
			want: &fleetv1.RegistryCheck{Reachable: true}, contains: "insecure-registries"},
		{name: "plain HTTP, credential requires TLS", image: public.Host + "/team/app:1", code: fleetv1.Reply_TLS_FAILURE,
			cred: &fleetv1.Credential{Registry: public.Host, RequireTls: true, Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}},
			want: &fleetv1.RegistryCheck{Reachable: true}, contains: "requireTls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := credential.Checker{Insecure: func(context.Context, string) bool { return !tt.secure }}
			rc, err := c.Check(context.Background(), tt.cred, tt.image)
			if got := errdefs.Code(err); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			if err != nil && !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("message %q does not say %q", err, tt.contains)
			}
			if rc.GetReachable() != tt.want.GetReachable() || rc.GetTlsVerified() != tt.want.GetTlsVerified() ||
				rc.GetAuthenticated() != tt.want.GetAuthenticated() || rc.GetImageFound() != tt.want.GetImageFound() {
				t.Errorf("registryCheck = %v, want %v", rc, tt.want)
			}
			if tt.want.GetImageFound() && (!strings.HasPrefix(rc.GetDigest(), "sha256:") || rc.GetSizeBytes() < 1<<20) {
				t.Errorf("registryCheck = %v, want the digest and the size of the testapp image", rc)
			}
		})
	}
}

// TestCheckDialAndRedact: a Checker with Dial opens every connection
// through it, redirects included, and with RedactAnswers its errors carry
// the registry's HTTP status, never what it answered. The zero Checker
// (the agent's) dials as before.
func TestCheckDialAndRedact(t *testing.T) {
	const secret = "password=hunter2"
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, secret, http.StatusUnauthorized)
	}))
	defer other.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, other.URL+"/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	var mu sync.Mutex
	dialled := map[string]bool{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialled[addr] = true
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	_, err := credential.Checker{Dial: dial, RedactAnswers: true}.Check(context.Background(), nil, host+"/team/app:1")
	if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("redacted check = %v, want HTTP 401 without the answer", err)
	}
	if !dialled[host] || !dialled[strings.TrimPrefix(other.URL, "http://")] {
		t.Errorf("dialled %v, want the registry and the redirect's target", dialled)
	}
	if _, err := (credential.Checker{}).Check(context.Background(), nil, host+"/team/app:1"); errdefs.Code(err) != fleetv1.Reply_UNAUTHENTICATED {
		t.Errorf("agent's check = %v, want UNAUTHENTICATED", err)
	}
}
