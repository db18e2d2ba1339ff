package regauth_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/regauth"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// listTree returns every path under dir, relative to it.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestRegistryNameIsNotAPath: a set-credentials whose registry is a path
// ("../escaped") is refused with INVALID_ARGUMENT naming the field, and
// nothing is written outside (or inside) the certs dir.
func TestRegistryNameIsNotAPath(t *testing.T) {
	ca, _ := registry.NewCA("ca")
	outer := t.TempDir()
	certs := filepath.Join(outer, "certs.d")
	k := newKeychain(t, func(c *regauth.KeychainConfig) { c.CertsDir = certs })
	for _, reg := range []string{
		"../escaped",
		"..",
		"../../../../tmp/escaped",
		"./x",
		"registry.example.com/../../escaped",
		"registry.example.com/team/../x",
		"..:5000",
		"reg..example.com",
		`registry.example.com\..\x`,
		"registry.example.com:notaport",
		"registry.example.com:99999",
		"file:///etc",
		"ssh://registry.example.com",
		"user@registry.example.com",
		"-registry.example.com",
		"%2e%2e",
	} {
		t.Run(reg, func(t *testing.T) {
			cred := &fleetv1.Credential{Registry: reg, CaCertificate: ca.PEM(), Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}}
			err := set(t, k, cred)
			if errdefs.Code(err) != fleetv1.Reply_INVALID_ARGUMENT || errdefs.Field(err) != "credentials[0].registry" {
				t.Errorf("Set(registry %q) = %v, want INVALID_ARGUMENT naming credentials[0].registry", reg, err)
			}
			if got := listTree(t, outer); len(got) != 0 {
				t.Errorf("Set(registry %q) wrote %v under %s, want nothing", reg, got, outer)
			}
		})
	}
	if len(k.Summaries()) != 0 {
		t.Error("a credential with a path for a registry was stored")
	}
}

// TestCertsDirSymlinkNotFollowed: a symlink planted in the certs dir (the
// host's directory, or the temporary file the agent writes first) is not
// followed out of it; the legitimate host next to it still works.
func TestCertsDirSymlinkNotFollowed(t *testing.T) {
	ca, _ := registry.NewCA("ca")
	base := t.TempDir()
	certs, outside := filepath.Join(base, "certs.d"), filepath.Join(base, "outside")
	for _, d := range []string{certs, outside, filepath.Join(certs, "tmp.example.com")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The host's directory is a link out; so is the temporary file of another.
	if err := os.Symlink(outside, filepath.Join(certs, "dir.example.com")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "victim"), filepath.Join(certs, "tmp.example.com", "ca.crt.tmp")); err != nil {
		t.Fatal(err)
	}
	k := newKeychain(t, func(c *regauth.KeychainConfig) { c.CertsDir = certs })
	anon := &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}
	for _, host := range []string{"dir.example.com", "tmp.example.com"} {
		err := set(t, k, &fleetv1.Credential{Registry: host, CaCertificate: ca.PEM(), Kind: anon})
		if got := listTree(t, outside); len(got) != 0 {
			t.Errorf("Set(%s) = %v and wrote %v outside the certs dir through a symlink, want nothing", host, err, got)
		}
	}
	if err := set(t, k, &fleetv1.Credential{Registry: "ok.example.com:5000", CaCertificate: ca.PEM(), Kind: anon}); err != nil {
		t.Fatalf("Set of a plain host = %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(certs, "ok.example.com:5000", "ca.crt")); err != nil || string(b) != ca.PEM() {
		t.Errorf("ca.crt of a plain host = %q, %v; want the CA", b, err)
	}
	if err := k.Delete(context.Background(), []string{"ok.example.com:5000"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(certs, "ok.example.com:5000")); !os.IsNotExist(err) {
		t.Errorf("the host's directory is still there after delete: %v", err)
	}
}

// TestLegitimateRegistryHosts: host[:port] in every form the engine takes
// is accepted, including IPv6 and Docker Hub's aliases.
func TestLegitimateRegistryHosts(t *testing.T) {
	ca, _ := registry.NewCA("ca")
	var certs string
	k := newKeychain(t, func(c *regauth.KeychainConfig) { certs = c.CertsDir })
	for _, tt := range []struct{ reg, dir string }{
		{"localhost:5000", "localhost:5000"},
		{"127.0.0.1:5000/team/", "127.0.0.1:5000"},
		{"[::1]:5000", "[::1]:5000"},
		{"https://Registry.Example.com/v2/", "registry.example.com"},
		{"index.docker.io", "docker.io"},
	} {
		err := set(t, k, &fleetv1.Credential{Registry: tt.reg, CaCertificate: ca.PEM(), Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}})
		if err != nil {
			t.Errorf("Set(%q) = %v, want accepted", tt.reg, err)
			continue
		}
		if _, err := os.Stat(filepath.Join(certs, tt.dir, "ca.crt")); err != nil {
			t.Errorf("Set(%q): %v; want the CA in %s", tt.reg, err, tt.dir)
		}
	}
}

// TestStoredPathRegistryIgnored: a credential stored before registry names
// were checked does not stop the agent from starting, and is not used.
func TestStoredPathRegistryIgnored(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, err := credential.LoadKeys(filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(&fleetv1.Credential{Registry: "../escaped", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "u", Password: "p"}}})
	if err := st.PutCredential("../escaped", keys.Encrypt(raw)); err != nil {
		t.Fatal(err)
	}
	k, err := regauth.NewKeychain(regauth.KeychainConfig{Store: st, Cipher: keys, CertsDir: filepath.Join(dir, "certs.d")})
	if err != nil {
		t.Fatalf("NewKeychain with a stored path registry = %v, want it started", err)
	}
	if s := k.Summaries(); len(s) != 0 {
		t.Errorf("Summaries = %v, want the stored path registry ignored", s)
	}
}
