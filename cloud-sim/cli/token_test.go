package cli

import (
	"net/http"
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

// TestNoTokenError: a 401 to a CLI that found no token says where it
// looked, naming the flags and the file; one that sent a token shows the
// API's own error.
func TestNoTokenError(t *testing.T) {
	unauthorized := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error": "send the API token", "code": "UNAUTHENTICATED"}`))
	})
	dir := t.TempDir()
	code, _, stderr := run(t, unauthorized, "gateways", "--data", dir)
	if code != ExitFailed || !strings.Contains(stderr, "--api-token-file") || !strings.Contains(stderr, filepath.Join(dir, "api-token")) {
		t.Errorf("no token: exit %d, stderr %q; want 1 naming --api-token-file and %s", code, stderr, filepath.Join(dir, "api-token"))
	}
	tokenFile := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tokenFile, []byte("wrong"), 0o600)
	code, _, stderr = run(t, unauthorized, "gateways", "--api-token-file", tokenFile)
	if code != ExitFailed || !strings.Contains(stderr, "send the API token") {
		t.Errorf("wrong token: exit %d, stderr %q; want 1 with the API's error", code, stderr)
	}
	code, _, stderr = run(t, unauthorized, "gateways", "--api-token-file", "/nonexistent/tok")
	if code != ExitUsage || !strings.Contains(stderr, "--api-token-file") {
		t.Errorf("missing token file: exit %d, stderr %q; want 2 naming --api-token-file", code, stderr)
	}
}
