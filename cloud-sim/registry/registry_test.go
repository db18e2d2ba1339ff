package registry

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/fleet-agent/fleet/internal/testenv"
)

const jsonKey = `{"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n"}`

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Push(context.Background(), "team/app", "1", img); err != nil {
		t.Fatal(err)
	}
	return s
}

// head asks the registry for team/app:1 as a pulling client would and
// returns the HTTP status of the failure (0 on success).
func head(t *testing.T, s *Server, auth authn.Authenticator, opts ...remote.Option) int {
	t.Helper()
	ref, err := name.ParseReference(s.Host+"/team/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	_, err = remote.Head(ref, append(opts, remote.WithAuth(auth))...)
	var terr *transport.Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &terr):
		return terr.StatusCode
	}
	t.Fatalf("head: %v", err)
	return -1
}

func TestAuthSchemes(t *testing.T) {
	compactKey := strings.NewReplacer(" ", "", "\n", "").Replace(`{"type": "service_account", "project_id": "p"}`)
	tests := []struct {
		name  string
		auth  Auth
		right authn.Authenticator
		wrong authn.Authenticator // nil: anonymous access is allowed
	}{
		{"anonymous", Anonymous{}, authn.Anonymous, nil},
		{"basic", Basic{Users: map[string]string{"robot$ci": "s3cret"}},
			&authn.Basic{Username: "robot$ci", Password: "s3cret"}, &authn.Basic{Username: "robot$ci", Password: "nope"}},
		{"gcr json key, whitespace differs", Basic{Users: map[string]string{"_json_key": jsonKey}},
			&authn.Basic{Username: "_json_key", Password: strings.ReplaceAll(jsonKey, ", ", ",\n  ")}, &authn.Basic{Username: "_json_key", Password: compactKey}},
		{"gcr json key base64", Basic{Users: map[string]string{"_json_key_base64": jsonKey}},
			&authn.Basic{Username: "_json_key_base64", Password: base64.StdEncoding.EncodeToString([]byte(jsonKey))}, &authn.Basic{Username: "_json_key_base64", Password: "e30="}},
		{"docker hub bearer realm", &Bearer{Users: map[string]string{"alice": "dckr_pat_x"}},
			&authn.Basic{Username: "alice", Password: "dckr_pat_x"}, &authn.Basic{Username: "alice", Password: "wrong"}},
		{"docker hub bearer, anonymous token has no access", &Bearer{Users: map[string]string{"alice": "dckr_pat_x"}},
			&authn.Basic{Username: "alice", Password: "dckr_pat_x"}, authn.Anonymous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Config{Auth: tt.auth})
			if got := head(t, s, tt.right); got != 0 {
				t.Errorf("with the right credential: HTTP %d", got)
			}
			if tt.wrong != nil {
				if got := head(t, s, tt.wrong); got != http.StatusUnauthorized {
					t.Errorf("with a wrong credential: HTTP %d, want 401", got)
				}
			}
		})
	}
}

func TestBearerChallenge(t *testing.T) {
	s := start(t, Config{Auth: &Bearer{Users: map[string]string{"a": "b"}, Service: "registry.docker.io"}})
	resp, err := http.Get(s.URL + "/v2/team/app/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := `Bearer realm="` + s.URL + `/token",service="registry.docker.io",scope="repository:team/app:pull"`
	if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != 401 || got != want {
		t.Errorf("challenge = %d %q, want 401 %q", resp.StatusCode, got, want)
	}
}

func TestECR(t *testing.T) {
	e := &ECR{Keys: map[string]string{"AKIDTEST": "secret-key"}, Region: "eu-west-1", TokenTTL: 2 * time.Second}
	s := start(t, Config{Auth: e})
	client := func(secret string) *ecr.Client {
		return ecr.New(ecr.Options{Region: "eu-west-1", BaseEndpoint: aws.String(s.APIEndpoint()),
			Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", secret, "")})
	}
	ctx := context.Background()
	if _, err := client("wrong-secret").GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{}); err == nil || !strings.Contains(err.Error(), "InvalidSignatureException") {
		t.Fatalf("wrong secret: %v, want InvalidSignatureException", err)
	}
	out, err := client("secret-key").GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.TokenCalls(); n != 1 {
		t.Errorf("TokenCalls = %d, want 1 (refused calls are not counted)", n)
	}
	d := out.AuthorizationData[0]
	raw, _ := base64.StdEncoding.DecodeString(aws.ToString(d.AuthorizationToken))
	user, pass, _ := strings.Cut(string(raw), ":")
	if user != "AWS" || time.Until(aws.ToTime(d.ExpiresAt)) > 3*time.Second {
		t.Fatalf("token for %q expiring %v", user, d.ExpiresAt)
	}
	auth := &authn.Basic{Username: user, Password: pass}
	if got := head(t, s, auth); got != 0 {
		t.Errorf("with a fresh token: HTTP %d", got)
	}
	testenv.Eventually(t, "the registry refuses the token once it expired", func() bool { return head(t, s, auth) != 0 })
}

func TestPrivateCA(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, Config{Certificate: &cert})
	other, _ := NewCA("other CA")
	for _, tt := range []struct {
		name string
		ca   *CA
		ok   bool
	}{{"right CA", ca, true}, {"wrong CA", other, false}} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tt.ca.Pool()}}
		ref, _ := name.ParseReference(s.Host + "/team/app:1")
		_, err := remote.Head(ref, remote.WithTransport(tr))
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v", tt.name, err)
		}
	}
}
