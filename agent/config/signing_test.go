package config_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/config"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
)

// TestCommandSigningKeys: the keys file is read as the provisioning
// response gives it, from a flag, FLEET_COMMAND_SIGNING_KEYS or the YAML
// file; a bad one is an error naming the setting and the key at fault.
func TestCommandSigningKeys(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	good, _ := json.Marshal(cmdsig.KeySet{Keys: []cmdsig.PublicKey{cmdsig.Public(pub)}})
	wrongID, _ := json.Marshal(cmdsig.KeySet{Keys: []cmdsig.PublicKey{{ID: "abc", PublicKey: cmdsig.Public(pub).PublicKey}}})
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o600)
		return p
	}
	yaml := write("agent.yaml", []byte("command-signing-keys: "+write("good.json", good)+"\ncommandMaxAge: 2h\n"))
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // "" for a verifier with the key
	}{
		{"flag", []string{"--command-signing-keys", write("good.json", good)}, nil, ""},
		{"environment", nil, map[string]string{"FLEET_COMMAND_SIGNING_KEYS": write("good.json", good)}, ""},
		{"file", []string{"--config", yaml}, nil, ""},
		{"missing file", []string{"--command-signing-keys", filepath.Join(dir, "none.json")}, nil, "--command-signing-keys"},
		{"not JSON", []string{"--command-signing-keys", write("bad.json", []byte("x"))}, nil, "not a keys file"},
		{"no keys", []string{"--command-signing-keys", write("empty.json", []byte(`{"keys": []}`))}, nil, "no command-signing keys"},
		{"id not of its key", []string{"--command-signing-keys", write("id.json", wrongID)}, nil, "keys[0].id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Load(append(append([]string{}, required...), tt.args...), env(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			v, err := cfg.CommandKeys()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--command-signing-keys") {
					t.Errorf("err = %v, want one naming --command-signing-keys and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || v == nil || len(v.IDs()) != 1 || v.IDs()[0] != cmdsig.KeyID(pub) {
				t.Errorf("CommandKeys() = %v, %v; want a verifier with key %s", v, err, cmdsig.KeyID(pub))
			}
		})
	}
	cfg, err := config.Load(append(append([]string{}, required...), "--config", yaml), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CommandMaxAge != 2*time.Hour || cfg.CommandMaxSkew != 5*time.Minute {
		t.Errorf("max age %v, skew %v; want 2h from the file and the 5m default", cfg.CommandMaxAge, cfg.CommandMaxSkew)
	}
	if _, err := config.Load(append(append([]string{}, required...), "--command-max-age", "1s"), env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "--command-max-age") {
		t.Errorf("--command-max-age 1s: err = %v, want one naming it", err)
	}
}
