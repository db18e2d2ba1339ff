package tenantcred

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/egress"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// newCredentials is a Credentials on a fresh store whose registry check
// may reach the allow-listed destinations besides public ones.
func newCredentials(t *testing.T, allow ...string) *Credentials {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "k"), filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := egress.New("--registry-check-allow", allow)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(context.Background(), Config{Store: st, Keys: keys, RegistryCheck: policy})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// server is an HTTP service that counts the requests it gets.
type server struct {
	*httptest.Server
	hits atomic.Int32
	host string
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.hits.Add(1); h(w, r) }))
	t.Cleanup(s.Close)
	u, _ := url.Parse(s.URL)
	s.host = u.Host
	return s
}

// registryThen answers /v2/ as a registry does and every other request
// with then.
func registryThen(then http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Write([]byte("{}"))
			return
		}
		then(w, r)
	}
}

// TestCheckSSRF: the cloud's registry check connects to loopback, private
// and link-local destinations only when they are allow-listed, refuses
// them on every redirect, and never echoes what a server answered.
// Before the egress policy the loopback service's password came back in
// the result, and redirects were followed anywhere.
func TestCheckSSRF(t *testing.T) {
	const secret = "password=hunter2"
	leak := func(w http.ResponseWriter, r *http.Request) { http.Error(w, "db "+secret, http.StatusUnauthorized) }
	internal := newServer(t, leak)
	leaky := newServer(t, registryThen(leak))
	toLoopback := newServer(t, registryThen(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.URL+"/admin", http.StatusTemporaryRedirect)
	}))
	toMetadata := newServer(t, registryThen(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/iam/security-credentials/", http.StatusFound)
	}))
	reg := testimage.NewRegistry(t)
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	c := newCredentials(t, leaky.host, toLoopback.host, toMetadata.host, reg.Host)

	tests := []struct {
		name     string
		image    string
		ok       bool
		contains string
	}{
		{"loopback service, not allow-listed", internal.host + "/team/app:1", false, "--registry-check-allow"},
		{"allow-listed service answering with a password", leaky.host + "/team/app:1", false, "HTTP 401"},
		{"redirect to loopback", toLoopback.host + "/team/app:1", false, "loopback address"},
		{"redirect to the metadata service", toMetadata.host + "/team/app:1", false, "169.254.169.254"},
		{"allow-listed registry", img, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Check(context.Background(), "acme", tt.image)
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != tt.ok || !strings.Contains(res.Message, tt.contains) {
				t.Errorf("check = ok %v %s %q, want ok %v saying %q", res.OK, res.Code, res.Message, tt.ok, tt.contains)
			}
			if strings.Contains(res.Message, "hunter2") {
				t.Errorf("the check echoed the server's answer: %q", res.Message)
			}
			if !tt.ok && res.Code != fleetv1.Reply_REGISTRY_UNREACHABLE.String() && res.Code != fleetv1.Reply_UNAUTHENTICATED.String() {
				t.Errorf("code %s, want REGISTRY_UNREACHABLE (or UNAUTHENTICATED from the allow-listed service)", res.Code)
			}
		})
	}
	if n := internal.hits.Load(); n != 0 {
		t.Errorf("the loopback service got %d requests", n)
	}
}

// TestUpgradeFingerprints: a credential stored before fingerprints were
// keyed (its record showed the unsalted SHA-256 of the secret) is stamped
// on load: the API shows the keyed fingerprint and gateways get it.
func TestUpgradeFingerprints(t *testing.T) {
	ctx := context.Background()
	st, err := state.Open(ctx, state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "k"), filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(basic("quay.io/acme", "hunter2"))
	const unsalted = "0123456789ab"
	legacy := &Credential{CredentialView: CredentialView{Tenant: "acme", Registry: "quay.io/acme", Kind: "basic", Username: "robot", Fingerprint: unsalted},
		Secret: keys.Encrypt(raw)}
	if err := st.Put(ctx, state.Credentials, state.Key("acme", "quay.io/acme"), legacy.stored()); err != nil {
		t.Fatal(err)
	}
	for range 2 { // once upgraded, loaded again unchanged
		c, err := New(ctx, Config{Store: st, Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		cr, err := c.Push("acme", "quay.io/acme")
		if err != nil {
			t.Fatal(err)
		}
		want := keys.Fingerprint("acme", basic("quay.io/acme", "hunter2"))
		if v := c.List("acme"); len(v) != 1 || v[0].Fingerprint != want || cr.GetFingerprint() != want {
			t.Errorf("after upgrade: view %+v, pushed fingerprint %q; want %q", v, cr.GetFingerprint(), want)
		}
	}
}
