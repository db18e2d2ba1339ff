package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPrebuiltIsUsed: with PrebuiltEnv set, a binary there is taken as it
// is, without a build (the package named here does not exist, so a build
// fails); without it, or without the binary there, it is built.
func TestPrebuiltIsUsed(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "prebuilt-probe")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(PrebuiltEnv, dir)
	if got := buildOnce(t, "prebuilt-probe", "./no/such/package"); got != fake {
		t.Fatalf("buildOnce = %q, want the prebuilt %q", got, fake)
	}
	if got := buildOnce(t, "prebuilt-probe", "./no/such/package"); got != fake {
		t.Fatalf("the second buildOnce = %q, want %q", got, fake)
	}

	for _, tc := range []struct {
		name, env string
	}{
		{"unset", ""},
		{"not there", dir},
		{"a directory", filepath.Dir(dir)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(PrebuiltEnv, tc.env)
			name := filepath.Base(dir)
			if tc.name == "not there" {
				name = "absent"
			}
			if p, ok := Prebuilt(name); ok {
				t.Fatalf("Prebuilt(%q) = %q, true with %s=%q", name, p, PrebuiltEnv, tc.env)
			}
		})
	}
}
