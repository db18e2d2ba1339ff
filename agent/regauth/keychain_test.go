package regauth_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/regauth"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// events records what the keychain publishes.
type events struct {
	mu  sync.Mutex
	all []*fleetv1.Event
}

func (e *events) add(ev *fleetv1.Event) { e.mu.Lock(); e.all = append(e.all, ev); e.mu.Unlock() }
func (e *events) kinds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.all {
		out = append(out, ev.GetKind())
	}
	return out
}

func newKeychain(t *testing.T, mod func(*regauth.KeychainConfig)) *regauth.Keychain {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, err := credential.LoadKeys(filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := regauth.KeychainConfig{Store: st, Cipher: keys, CertsDir: filepath.Join(dir, "certs.d"), ECRToken: awsecr.Fetch}
	if mod != nil {
		mod(&cfg)
	}
	k, err := regauth.NewKeychain(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func set(t *testing.T, k *regauth.Keychain, creds ...*fleetv1.Credential) error {
	t.Helper()
	return k.Set(context.Background(), creds)
}

func ecrCred(registry, akid, secret string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{
		Region: "eu-west-1", AccessKeyId: akid, SecretAccessKey: secret}}}
}

// TestECRTokenCachedAndRefreshed: the agent calls GetAuthorizationToken
// (through the SDK, reaching the emulated ECR by AWS_ENDPOINT_URL_ECR)
// once per token lifetime, not once per pull; the background loop replaces
// the token before it expires, and Refresh replaces it at once.
func TestECRTokenCachedAndRefreshed(t *testing.T) {
	e := &registry.ECR{Keys: map[string]string{"AKIDFLEET": "ecr-secret-key"}, Region: "eu-west-1", TokenTTL: 4 * time.Second}
	reg := testimage.NewRegistry(t, testimage.WithAuth(e))
	t.Setenv("AWS_ENDPOINT_URL_ECR", reg.APIEndpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	k := newKeychain(t, nil)
	ctx := context.Background()
	image := reg.Host + "/team/app:1"

	if err := set(t, k, ecrCred(reg.Host, "AKIDFLEET", "wrong")); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Auth(ctx, image); errdefs.Code(err) != fleetv1.Reply_UNAUTHENTICATED || !strings.Contains(err.Error(), "InvalidSignatureException") {
		t.Fatalf("Auth with a wrong secret key = %v, want UNAUTHENTICATED naming AWS's error", err)
	}
	if err := set(t, k, ecrCred(reg.Host, "AKIDFLEET", "ecr-secret-key")); err != nil {
		t.Fatal(err)
	}
	first, err := k.Auth(ctx, image)
	if err != nil || first == "" {
		t.Fatalf("Auth = %q, %v", first, err)
	}
	for range 1000 {
		if a, err := k.Auth(ctx, image); err != nil || a != first {
			t.Fatalf("Auth changed within the token's lifetime: %v", err)
		}
	}
	if n := e.TokenCalls(); n != 1 {
		t.Errorf("GetAuthorizationToken calls for 1001 pulls = %d, want 1", n)
	}
	s := k.Summaries()[0]
	if s.GetKind() != "ecr" || s.GetExpiresAt() == nil || s.GetWarning() != "" {
		t.Errorf("summary = %v, want kind ecr with the token's expiry", s)
	}

	refreshed, ok, err := k.Refresh(ctx, image)
	if err != nil || !ok || refreshed == first {
		t.Fatalf("Refresh = %v, %v (same token: %v)", ok, err, refreshed == first)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go k.Run(runCtx)
	// The token lives 4 s and is replaced a quarter before: poll for it.
	testenv.Eventually(t, "the background loop refreshes the token", func() bool { return e.TokenCalls() >= 3 })
	if a, _ := k.Auth(ctx, image); a == refreshed {
		t.Error("Auth still returns the replaced token")
	}
}

func TestEcrTokenExpiry(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	ev := &events{}
	k := newKeychain(t, func(c *regauth.KeychainConfig) { c.Now, c.Event, c.MaxSleep = clk.Now, ev.add, 20*time.Millisecond })
	const password = "ecr-token-password-secret"
	cred := &fleetv1.Credential{Registry: "123456789012.dkr.ecr.eu-west-1.amazonaws.com", Kind: &fleetv1.Credential_EcrToken{
		EcrToken: &fleetv1.EcrToken{Password: password, ExpiresAt: timestamppb.New(clk.Now().Add(90 * time.Minute))}}}
	if err := set(t, k, cred); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go k.Run(ctx)
	image := "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1"
	if a, err := k.Auth(ctx, image); err != nil || a == "" {
		t.Fatalf("Auth before expiry = %v", err)
	}
	if w := k.Summaries()[0].GetWarning(); w != "" {
		t.Errorf("warning 90 min before expiry = %q, want none (window 1 h)", w)
	}

	clk.Add(45 * time.Minute)
	testenv.Eventually(t, "credential.expiring event", func() bool { return strings.Contains(strings.Join(ev.kinds(), ","), "credential.expiring") })
	if w := k.Summaries()[0].GetWarning(); !strings.Contains(w, "expires in 45m0s") {
		t.Errorf("summary warning = %q", w)
	}

	clk.Add(46 * time.Minute)
	testenv.Eventually(t, "credential.expired event", func() bool { return strings.Contains(strings.Join(ev.kinds(), ","), "credential.expired") })
	_, err := k.Auth(ctx, image)
	if errdefs.Code(err) != fleetv1.Reply_UNAUTHENTICATED || !strings.Contains(err.Error(), "expired at 2026-11-23T13:30:00Z") {
		t.Errorf("Auth after expiry = %v, want UNAUTHENTICATED naming the expiry", err)
	}
	for _, e := range ev.all {
		if strings.Contains(e.GetMessage(), password) {
			t.Error("password in an event")
		}
	}
}

func TestCredentialValidation(t *testing.T) {
	ca, _ := registry.NewCA("ca")
	cert, _, _ := ca.IssueClient("gw")
	_, otherKey, _ := ca.IssueClient("other")
	tests := []struct {
		name  string
		cred  *fleetv1.Credential
		field string
	}{
		{"ecr without region on a non-ECR host", &fleetv1.Credential{Registry: "registry.example.com", Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{}}}, "ecr.region"},
		{"ecr region that is a host name", &fleetv1.Credential{Registry: "registry.example.com", Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{Region: "evil.example/x#"}}}, "ecr.region"},
		{"ecr key without secret", &fleetv1.Credential{Registry: "123456789012.dkr.ecr.eu-west-1.amazonaws.com", Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{AccessKeyId: "AKID"}}}, "ecr.secretAccessKey"},
		{"ecr-token without expiry", &fleetv1.Credential{Registry: "r.example.com", Kind: &fleetv1.Credential_EcrToken{EcrToken: &fleetv1.EcrToken{Password: "p"}}}, "ecrToken.expiresAt"},
		{"CA that is not PEM", &fleetv1.Credential{Registry: "r.example.com", CaCertificate: "not a cert", Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}}, "caCertificate"},
		{"client cert without key", &fleetv1.Credential{Registry: "r.example.com", ClientCertificate: cert, Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}}, "clientCertificate"},
		{"client key of another cert", &fleetv1.Credential{Registry: "r.example.com", ClientCertificate: cert, ClientKey: otherKey, Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}}, "clientKey"},
		{"no kind", &fleetv1.Credential{Registry: "r.example.com"}, "credentials[0]"},
	}
	k := newKeychain(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := set(t, k, tt.cred)
			if errdefs.Code(err) != fleetv1.Reply_INVALID_ARGUMENT || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Set = %v, want INVALID_ARGUMENT naming %s", err, tt.field)
			}
		})
	}
	if len(k.Summaries()) != 0 {
		t.Error("an invalid credential was stored")
	}
}

// TestTLSFilesInstalled: the CA and client pair go where the engine reads
// them; deleting the credential removes what the agent wrote and leaves
// what an operator installed.
func TestTLSFilesInstalled(t *testing.T) {
	ca, _ := registry.NewCA("ca")
	cert, key, _ := ca.IssueClient("gw")
	var dir string
	k := newKeychain(t, func(c *regauth.KeychainConfig) { dir = c.CertsDir })
	const host = "registry.example.com:5000"
	cred := &fleetv1.Credential{Registry: host + "/team/", CaCertificate: ca.PEM(), ClientCertificate: cert, ClientKey: key,
		Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "u", Password: "p"}}}
	if err := set(t, k, cred); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		want string
		mode os.FileMode
	}{{"ca.crt", ca.PEM(), 0o644}, {"client.cert", cert, 0o644}, {"client.key", key, 0o600}} {
		path := filepath.Join(dir, host, f.name)
		b, err := os.ReadFile(path)
		st, _ := os.Stat(path)
		if err != nil || string(b) != f.want || st.Mode().Perm() != f.mode {
			t.Errorf("%s: %v, mode %v; want the credential's content, mode %v", f.name, err, st.Mode().Perm(), f.mode)
		}
	}
	if s := k.Summaries()[0]; !s.GetHasCaCertificate() || !s.GetHasClientCertificate() {
		t.Errorf("summary = %v", s)
	}
	// An operator's own file in the same directory survives.
	own := filepath.Join(dir, host, "operator.crt")
	os.WriteFile(own, []byte("mine"), 0o644)
	err := k.Delete(context.Background(), []string{host + "/team"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "client.cert", "client.key"} {
		if _, err := os.Stat(filepath.Join(dir, host, f)); !os.IsNotExist(err) {
			t.Errorf("%s still there after delete", f)
		}
	}
	if _, err := os.Stat(own); err != nil {
		t.Errorf("the operator's file was removed: %v", err)
	}
}

// TestCheckUsesStoredCredential: the keychain checks with the credential a
// pull would use, and none when no scope covers the image.
func TestCheckUsesStoredCredential(t *testing.T) {
	reg := testimage.NewRegistry(t, testimage.WithBasicAuth("robot", "pw"))
	reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	k := newKeychain(t, nil)
	ctx := context.Background()
	if _, err := k.Check(ctx, reg.Host+"/team/app:1"); errdefs.Code(err) != fleetv1.Reply_UNAUTHENTICATED {
		t.Fatalf("Check without a credential = %v, want UNAUTHENTICATED", err)
	}
	cred := &fleetv1.Credential{Registry: reg.Host + "/team", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: "pw"}}}
	if err := set(t, k, cred); err != nil {
		t.Fatal(err)
	}
	rc, err := k.Check(ctx, reg.Host+"/team/app:1")
	if err != nil || !rc.GetImageFound() {
		t.Errorf("Check = %v, %v; want the image found with the stored credential", rc, err)
	}
	if _, err := k.Check(ctx, ""); errdefs.Field(err) != "image" {
		t.Errorf("Check of no image = %v, want an error naming image", err)
	}
}

// TestECRWithoutTokenSource: a keychain that cannot get ECR tokens refuses
// a pull that needs one with UNSUPPORTED, and other credentials still work.
func TestECRWithoutTokenSource(t *testing.T) {
	k := newKeychain(t, func(c *regauth.KeychainConfig) { c.ECRToken = nil })
	const host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	if err := set(t, k, ecrCred(host, "AKIDFLEET", "ecr-secret-key"),
		&fleetv1.Credential{Registry: "registry.example.com", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "u", Password: "p"}}}); err != nil {
		t.Fatal(err)
	}
	_, err := k.Auth(context.Background(), host+"/team/app:1")
	if errdefs.Code(err) != fleetv1.Reply_UNSUPPORTED || strings.Contains(err.Error(), "ecr-secret-key") {
		t.Errorf("Auth of an ECR image = %v, want UNSUPPORTED without the secret", err)
	}
	if a, err := k.Auth(context.Background(), "registry.example.com/team/app:1"); err != nil || a == "" {
		t.Errorf("Auth of a basic-auth image = %q, %v; want the credential", a, err)
	}
}

// TestSummaryFingerprint: the birth's fingerprint is the one the cloud set
// on the credential, or a random one, never the unsalted SHA-256 of the
// secret that let anyone reading births test guessed passwords (before
// issue 12 it was sha256("robot\x00hunter2")[:12]).
func TestSummaryFingerprint(t *testing.T) {
	k := newKeychain(t, nil)
	basic := func(registry string) *fleetv1.Credential {
		return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: "hunter2"}}}
	}
	fromCloud := basic("quay.io/acme")
	fromCloud.Fingerprint = "0a1b2c3d4e5f"
	if err := set(t, k, fromCloud, basic("quay.io/other")); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("robot\x00hunter2"))
	unsalted := hex.EncodeToString(sum[:])[:12]
	got := map[string]string{}
	for _, s := range k.Summaries() {
		got[s.GetRegistry()] = s.GetFingerprint()
	}
	if got["quay.io/acme"] != "0a1b2c3d4e5f" {
		t.Errorf("fingerprint of the cloud's credential = %q, want the one it set", got["quay.io/acme"])
	}
	if fp := got["quay.io/other"]; len(fp) != 12 || fp == unsalted {
		t.Errorf("fingerprint of a credential set without one = %q, want 12 random hex digits, not %q", fp, unsalted)
	}
}
