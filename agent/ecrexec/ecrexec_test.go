package ecrexec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// The test binary is its own fake helper: run with fakeMode set, it records
// its arguments and standard input in the file fakeRecord names and answers
// as the mode says.
const (
	fakeMode   = "ECREXEC_FAKE_MODE"
	fakeRecord = "ECREXEC_FAKE_RECORD"
)

const secret = "wJalrXUtnFEMI-test-secret-key"

var expires = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeMode); mode != "" {
		os.Exit(fakeHelper(mode))
	}
	os.Exit(m.Run())
}

func fakeHelper(mode string) int {
	in, _ := io.ReadAll(os.Stdin)
	rec, _ := json.Marshal(map[string]any{"args": os.Args, "stdin": string(in)})
	_ = os.WriteFile(os.Getenv(fakeRecord), rec, 0o600)
	fetch := func(kind error, msg string) credential.TokenSource {
		return func(context.Context, *fleetv1.EcrAuth, string, time.Time) (*credential.Token, error) {
			if kind != nil {
				return nil, fmt.Errorf("%w: %s", kind, msg)
			}
			if msg != "" {
				return nil, errors.New(msg)
			}
			return &credential.Token{User: "AWS", Password: "token-password", Expires: expires}, nil
		}
	}
	var f credential.TokenSource
	switch mode {
	case "token":
		f = fetch(nil, "")
	case "unauthenticated":
		f = fetch(errdefs.ErrUnauthenticated, "ECR GetAuthorizationToken: InvalidSignatureException: bad signature")
	case "denied":
		f = fetch(errdefs.ErrPermissionDenied, "ECR GetAuthorizationToken: AccessDeniedException: not allowed")
	case "unreachable":
		f = fetch(errdefs.ErrRegistryUnreachable, "ECR GetAuthorizationToken: dial tcp: connection refused")
	case "internal":
		f = fetch(nil, "aws config: broken shared config file")
	case "hang":
		time.Sleep(time.Minute) // the fake of a helper that never answers
		return 0
	case "garbage":
		fmt.Println("not json")
		return 0
	case "flood":
		os.Stdout.Write(make([]byte, 4*maxOutput))
		return 0
	case "crash":
		fmt.Fprintln(os.Stderr, "panic: something broke")
		return 2
	}
	if err := Serve(context.Background(), strings.NewReader(string(in)), os.Stdout, f, time.Now); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// fake returns a helper that answers as mode says and the file where it
// records its arguments and input.
func fake(t *testing.T, mode string) (Helper, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(t.TempDir(), "record.json")
	t.Setenv(fakeMode, mode)
	t.Setenv(fakeRecord, rec)
	return Helper{Path: exe}, rec
}

var cred = &fleetv1.EcrAuth{AccessKeyId: "AKIDEXAMPLE", SecretAccessKey: secret, SessionToken: "session-token-secret", RoleArn: "arn:aws:iam::123456789012:role/pull"}

func TestToken(t *testing.T) {
	h, rec := fake(t, "token")
	now := expires.Add(-12 * time.Hour)
	got, err := h.Token(context.Background(), cred, "eu-west-1", now)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	want := credential.NewToken("AWS", "token-password", expires, now)
	if *got != *want {
		t.Errorf("Token = %+v, want %+v", got, want)
	}

	var r struct {
		Args  []string
		Stdin string
	}
	raw, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Args) != 1 || strings.Contains(strings.Join(r.Args, " "), secret) {
		t.Errorf("helper argv = %q, want the program alone, no secret", r.Args)
	}
	var req request
	if err := json.Unmarshal([]byte(r.Stdin), &req); err != nil {
		t.Fatalf("helper stdin %q: %v", r.Stdin, err)
	}
	if want := toRequest(cred, "eu-west-1"); req != want {
		t.Errorf("helper stdin = %+v, want %+v", req, want)
	}
}

func TestTokenErrors(t *testing.T) {
	tests := []struct {
		mode     string
		timeout  time.Duration
		wantCode fleetv1.Reply_Code
		wantMsg  string
	}{
		{"unauthenticated", 0, fleetv1.Reply_UNAUTHENTICATED, "unauthenticated: ECR GetAuthorizationToken: InvalidSignatureException: bad signature"},
		{"denied", 0, fleetv1.Reply_PERMISSION_DENIED, "permission denied: ECR GetAuthorizationToken: AccessDeniedException: not allowed"},
		{"unreachable", 0, fleetv1.Reply_REGISTRY_UNREACHABLE, "registry unreachable: ECR GetAuthorizationToken: dial tcp: connection refused"},
		{"internal", 0, fleetv1.Reply_INTERNAL, "aws config: broken shared config file"},
		{"hang", 300 * time.Millisecond, fleetv1.Reply_REGISTRY_UNREACHABLE, "did not answer within 300ms"},
		{"garbage", 0, fleetv1.Reply_INTERNAL, "not JSON"},
		{"flood", 0, fleetv1.Reply_INTERNAL, "not JSON"},
		{"crash", 0, fleetv1.Reply_INTERNAL, "panic: something broke"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			h, _ := fake(t, tt.mode)
			h.Timeout = tt.timeout
			_, err := h.Token(context.Background(), cred, "eu-west-1", time.Now())
			if got := errdefs.Code(err); got != tt.wantCode {
				t.Errorf("code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error = %v, want it to contain %q", err, tt.wantMsg)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("error %q holds the secret key", err)
			}
		})
	}
}

func TestMissingHelper(t *testing.T) {
	for _, path := range []string{filepath.Join(t.TempDir(), "fleet-agent-ecr"), "fleet-agent-ecr-not-on-path"} {
		t.Run(path, func(t *testing.T) {
			_, err := Helper{Path: path}.Token(context.Background(), cred, "eu-west-1", time.Now())
			if got := errdefs.Code(err); got != fleetv1.Reply_UNSUPPORTED {
				t.Errorf("code = %v (%v), want UNSUPPORTED", got, err)
			}
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "--ecr-helper") {
				t.Errorf("error = %v, want it to name %s and --ecr-helper", err, path)
			}
		})
	}
}

func TestLimitedBuffer(t *testing.T) {
	var b limitedBuffer
	if n, err := io.Copy(&b, strings.NewReader(strings.Repeat("x", 3*maxOutput))); n != 3*maxOutput || err != nil {
		t.Fatalf("io.Copy = %d, %v; want all of it consumed", n, err)
	}
	if got := len(b.Bytes()); got != maxOutput {
		t.Errorf("kept %d bytes, want %d", got, maxOutput)
	}
}

func TestCanceled(t *testing.T) {
	h, _ := fake(t, "hang")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Token(ctx, cred, "eu-west-1", time.Now()); !errors.Is(err, context.Canceled) {
		t.Errorf("Token with a canceled context = %v, want context.Canceled", err)
	}
}

func TestServeRequest(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
	}{
		{"not json", "secret-key", "reading the request"},
		{"empty", "", "reading the request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			err := Serve(context.Background(), strings.NewReader(tt.in), &out, nil, time.Now)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Serve(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
			if out.Len() != 0 {
				t.Errorf("Serve(%q) wrote %q, want nothing", tt.in, out.String())
			}
		})
	}
}

// FuzzParseResponse: whatever the helper writes, the agent gets a token
// or an error, never a panic.
func FuzzParseResponse(f *testing.F) {
	f.Add([]byte(`{"token":{"user":"AWS","password":"p","expiresAt":"2026-12-01T12:00:00Z"}}`))
	f.Add([]byte(`{"error":{"code":"UNAUTHENTICATED","message":"m"}}`))
	f.Add([]byte(`{"error":{"code":"NO_SUCH_CODE","message":"m"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, out []byte) {
		tok, err := parseResponse(out, time.Now())
		if (tok == nil) == (err == nil) {
			t.Fatalf("parseResponse(%q) = %v, %v: want a token or an error", out, tok, err)
		}
	})
}
