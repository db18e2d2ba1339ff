package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindToken: --api-token-file wins over CLOUD_SIM_TOKEN, which wins
// over the file serve made in --data; errors name the flag and the file.
func TestFindToken(t *testing.T) {
	data, flagFile, emptyFile := t.TempDir(), filepath.Join(t.TempDir(), "tok"), filepath.Join(t.TempDir(), "empty")
	os.WriteFile(filepath.Join(data, "api-token"), []byte("from-data\n"), 0o600)
	os.WriteFile(flagFile, []byte("from-flag\n"), 0o600)
	os.WriteFile(emptyFile, nil, 0o600)
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "CLOUD_SIM_TOKEN" {
				return v
			}
			return ""
		}
	}
	tests := []struct {
		name           string
		file, dir, env string
		want, wantHelp string
		wantErr        string
	}{
		{name: "flag", file: flagFile, dir: data, env: "from-env", want: "from-flag"},
		{name: "env", dir: data, env: "from-env", want: "from-env"},
		{name: "data", dir: data, want: "from-data"},
		{name: "none", dir: t.TempDir(), wantHelp: "--data"},
		{name: "missing flag file", file: "/nonexistent/tok", dir: data, wantErr: "--api-token-file"},
		{name: "empty flag file", file: emptyFile, dir: data, wantErr: emptyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, help, err := FindToken(tt.file, tt.dir, env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || (tt.wantHelp != "" && !strings.Contains(help, tt.wantHelp)) {
				t.Fatalf("got %q, %q, %v; want %q and help naming %q", got, help, err, tt.want, tt.wantHelp)
			}
		})
	}
}
