// Package ecrexec gets ECR tokens by running the fleet-agent-ecr helper,
// as the Docker CLI runs docker-credential-ecr-login: the helper links the
// AWS SDK so that the agent does not (the SDK is about 4 MB of code, and
// on a gateway every megabyte of the agent's binary is a megabyte of
// resident memory). The agent runs it only when it needs a token: on first
// use of an ecr credential, before the token expires, after a 401.
//
// The exchange is one JSON object each way: the credential and the region
// on the helper's standard input (never in its arguments, which ps shows),
// a token or an error on its standard output. The helper inherits the
// agent's environment, so the SDK's settings (AWS_ENDPOINT_URL_ECR,
// AWS_CONFIG_FILE, proxies …) apply as they would in process.
package ecrexec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Name is the helper's file name.
const Name = "fleet-agent-ecr"

// DefaultTimeout bounds one run of the helper: the SDK's own call is
// bounded at 30 s, and loading its configuration or assuming a role may
// take a few seconds more.
const DefaultTimeout = 45 * time.Second

// maxOutput bounds what is read of the helper's output and error streams.
const maxOutput = 64 << 10

// request is what the helper reads on its standard input.
type request struct {
	AccessKeyID     string `json:"accessKeyId,omitempty"`
	SecretAccessKey string `json:"secretAccessKey,omitempty"`
	SessionToken    string `json:"sessionToken,omitempty"`
	RoleARN         string `json:"roleArn,omitempty"`
	Region          string `json:"region"`
}

// response is what the helper writes on its standard output: a token or
// an error.
type response struct {
	Token *token     `json:"token,omitempty"`
	Error *errorBody `json:"error,omitempty"`
}

type token struct {
	User      string    `json:"user"`
	Password  string    `json:"password"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// errorBody carries the error's kind as its reply code name
// (UNAUTHENTICATED, PERMISSION_DENIED, REGISTRY_UNREACHABLE …) and its
// whole message, which never holds the secret key.
type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func toRequest(c *fleetv1.EcrAuth, region string) request {
	return request{AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(),
		SessionToken: c.GetSessionToken(), RoleARN: c.GetRoleArn(), Region: region}
}

func (r request) ecrAuth() *fleetv1.EcrAuth {
	return &fleetv1.EcrAuth{AccessKeyId: r.AccessKeyID, SecretAccessKey: r.SecretAccessKey,
		SessionToken: r.SessionToken, RoleArn: r.RoleARN, Region: r.Region}
}

// Helper runs the fleet-agent-ecr helper.
type Helper struct {
	// Path is the helper's executable: a path, or a name looked up on
	// PATH. Empty means DefaultPath().
	Path string
	// Timeout bounds one run (DefaultTimeout when zero).
	Timeout time.Duration
}

// DefaultPath is fleet-agent-ecr beside the running executable when it is
// there, else the name alone, looked up on PATH when the helper runs.
func DefaultPath() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), Name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return Name
}

// Token is a credential.TokenSource: it runs the helper once for a new
// token of c in region.
func (h Helper) Token(ctx context.Context, c *fleetv1.EcrAuth, region string, now time.Time) (*credential.Token, error) {
	path, timeout := h.Path, h.Timeout
	if path == "" {
		path = DefaultPath()
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	in, err := json.Marshal(toRequest(c, region))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr limitedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second // a child that keeps the pipes open once killed
	runErr := cmd.Run()
	switch {
	case errors.Is(runErr, exec.ErrNotFound) || errors.Is(runErr, fs.ErrNotExist) || errors.Is(runErr, fs.ErrPermission):
		return nil, fmt.Errorf("%w: cannot run the ECR token helper %s: %v; install %s beside fleet-agent or name it with --ecr-helper",
			errdefs.ErrUnsupported, path, runErr, Name)
	case ctx.Err() != nil:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: the ECR token helper %s did not answer within %s", errdefs.ErrRegistryUnreachable, path, timeout)
		}
		return nil, ctx.Err()
	}
	t, err := parseResponse(stdout.Bytes(), now)
	if err != nil && runErr != nil && !errors.Is(err, errHelper) {
		return nil, fmt.Errorf("the ECR token helper %s failed: %v: %s", path, runErr, strings.TrimSpace(stderr.String()))
	}
	return t, err
}

// errHelper marks the errors the helper reported, as opposed to an answer
// that could not be read.
var errHelper = errors.New("reported by the helper")

// parseResponse reads the helper's answer.
func parseResponse(out []byte, now time.Time) (*credential.Token, error) {
	var r response
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("the ECR token helper's answer is not JSON: %v", err)
	}
	switch {
	case r.Error != nil:
		return nil, &helperError{kind: errdefs.Kind(fleetv1.Reply_Code(fleetv1.Reply_Code_value[r.Error.Code])), msg: r.Error.Message}
	case r.Token != nil && r.Token.Password != "":
		return credential.NewToken(r.Token.User, r.Token.Password, r.Token.ExpiresAt, now), nil
	}
	return nil, errors.New("the ECR token helper answered neither a token nor an error")
}

// helperError is an error the helper reported: its message as it wrote
// it, its kind restored from the code.
type helperError struct {
	kind error
	msg  string
}

func (e *helperError) Error() string { return e.msg }

func (e *helperError) Unwrap() []error {
	if e.kind == nil {
		return []error{errHelper}
	}
	return []error{e.kind, errHelper}
}

// Serve is the helper's side: it reads one request from in, gets the
// token with fetch and writes the answer to out. An error getting the
// token is an answer; Serve's own error means nothing usable was written.
func Serve(ctx context.Context, in io.Reader, out io.Writer, fetch credential.TokenSource, now func() time.Time) error {
	var req request
	if err := json.NewDecoder(io.LimitReader(in, maxOutput)).Decode(&req); err != nil {
		return fmt.Errorf("reading the request on standard input: %w", err)
	}
	var resp response
	t, err := fetch(ctx, req.ecrAuth(), req.Region, now())
	if err != nil {
		resp.Error = &errorBody{Code: errdefs.Code(err).String(), Message: err.Error()}
	} else {
		resp.Token = &token{User: t.User, Password: t.Password, ExpiresAt: t.Expires}
	}
	return json.NewEncoder(out).Encode(resp)
}

// limitedBuffer keeps the first maxOutput bytes written to it. (Not an
// embedded bytes.Buffer: io.Copy would call its ReadFrom, past the limit.)
type limitedBuffer struct{ buf bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte  { return b.buf.Bytes() }
func (b *limitedBuffer) String() string { return b.buf.String() }
