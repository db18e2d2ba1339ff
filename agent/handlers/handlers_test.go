package handlers_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/handlers"
	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// deployments is a fake reconciler: Apply rejects specs named "bad",
// accepts the others and finishes when release is closed.
type deployments struct {
	release chan struct{}
}

func (d *deployments) Apply(ctx context.Context, spec *fleetv1.DeploymentSpec, accepted func()) (*fleetv1.DeploymentStatus, error) {
	if spec.GetName() == "bad" {
		return nil, errdefs.Invalid("spec.name", "bad name")
	}
	accepted()
	select {
	case <-d.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &fleetv1.DeploymentStatus{Name: spec.GetName(), Phase: fleetv1.DeploymentStatus_RUNNING}, nil
}

func (d *deployments) Stop(context.Context, string) (*fleetv1.DeploymentStatus, error) {
	return nil, &errdefs.FieldError{Field: "name", Kind: errdefs.ErrNotFound, Msg: "no such deployment"}
}

func (d *deployments) Start(_ context.Context, name string, _ func()) (*fleetv1.DeploymentStatus, error) {
	// A rollout again that fails on the stored spec: not a field of start.
	return nil, errdefs.Invalid("spec.pullPolicy", "image not present")
}

func (d *deployments) Restart(_ context.Context, name string, _ func()) (*fleetv1.DeploymentStatus, error) {
	return &fleetv1.DeploymentStatus{Name: name, Phase: fleetv1.DeploymentStatus_RUNNING}, nil
}

func (d *deployments) Remove(context.Context, string, bool) error { return nil }

func (d *deployments) Prefetch(_ context.Context, spec *fleetv1.DeploymentSpec, accepted func()) (*fleetv1.DeploymentStatus, error) {
	if spec.GetName() == "bad" {
		return nil, errdefs.Invalid("spec.name", "bad name")
	}
	accepted()
	return &fleetv1.DeploymentStatus{Name: spec.GetName(), ImageDigest: "sha256:prefetched"}, nil
}

// credentials is a fake keychain that records what it was given.
type credentials struct {
	mu  sync.Mutex
	set []*fleetv1.Credential
}

func (c *credentials) Set(_ context.Context, creds []*fleetv1.Credential) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set = append(c.set, creds...)
	return nil
}

func (c *credentials) Delete(context.Context, []string) error {
	return errdefs.Invalid("registries[0]", "no such registry")
}

func (c *credentials) Check(context.Context, string) (*fleetv1.RegistryCheck, error) {
	return &fleetv1.RegistryCheck{Reachable: true}, errdefs.Invalid("image", "bad reference")
}

type publisher struct {
	mu      sync.Mutex
	replies []*fleetv1.Reply
}

func (p *publisher) Publish(_ context.Context, m mqttlink.Message) error {
	r := new(fleetv1.Reply)
	if err := codec.Unmarshal(codec.FromContentType(m.ContentType), m.Payload, r); err != nil {
		return err
	}
	p.mu.Lock()
	p.replies = append(p.replies, r)
	p.mu.Unlock()
	return nil
}

// of returns the replies to command id.
func (p *publisher) of(id string) []*fleetv1.Reply {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*fleetv1.Reply
	for _, r := range p.replies {
		if r.GetCommandId() == id {
			out = append(out, r)
		}
	}
	return out
}

type env struct {
	proc  *command.Processor
	pub   *publisher
	deps  *deployments
	creds *credentials
}

func newEnv(t *testing.T, requireSealed bool) *env {
	t.Helper()
	st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pub: &publisher{}, deps: &deployments{release: make(chan struct{})}, creds: &credentials{}}
	verbs, err := handlers.New(handlers.Config{Deployments: e.deps, Credentials: e.creds, RequireSealed: requireSealed,
		OpenSealed: func(b []byte) ([]byte, error) {
			if string(b) == "garbage" {
				return nil, errors.New("does not open")
			}
			return b, nil // "sealed" in the clear
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.proc, err = command.New(command.Config{Scheme: topic.Default(), Tenant: "t", Gateway: "g", Journal: st, Publisher: e.pub, Handlers: verbs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.proc.Run(ctx); close(done) }()
	t.Cleanup(func() { close(e.deps.release); cancel(); <-done; st.Close() })
	return e
}

func (e *env) send(t *testing.T, cmd *fleetv1.Command) {
	t.Helper()
	b, err := codec.Marshal(codec.Protobuf, cmd)
	if err != nil {
		t.Fatal(err)
	}
	e.proc.Receive(mqttlink.Inbound{Topic: topic.Default().Command("t", "g", topic.VerbOf(cmd)), Payload: b, ContentType: codec.Protobuf.ContentType()})
}

func (e *env) await(t *testing.T, id string, n int) []*fleetv1.Reply {
	t.Helper()
	var rs []*fleetv1.Reply
	testenv.Eventually(t, "replies to "+id, func() bool { rs = e.pub.of(id); return len(rs) >= n })
	return rs
}

// TestDeployDetachesOnceAccepted: a deploy the reconciler accepted is
// answered ACCEPTED at once, and the executor takes the next command while
// the rollout runs; its final reply carries the status.
func TestDeployDetachesOnceAccepted(t *testing.T) {
	e := newEnv(t, false)
	e.send(t, &fleetv1.Command{Id: "d1", Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{Name: "web"}}}})
	if r := e.await(t, "d1", 1)[0]; r.GetResult() != fleetv1.Reply_ACCEPTED {
		t.Fatalf("first reply = %v, want ACCEPTED", r)
	}
	e.send(t, &fleetv1.Command{Id: "r1", Body: &fleetv1.Command_Restart{Restart: &fleetv1.DeploymentRef{Name: "web"}}})
	if r := e.await(t, "r1", 1)[0]; r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("restart while the rollout runs = %v, want SUCCEEDED (the executor is not blocked)", r)
	}
	e.deps.release <- struct{}{}
	rs := e.await(t, "d1", 2)
	if r := rs[1]; r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Errorf("final reply = %v, want SUCCEEDED with the RUNNING status", r)
	}
}

// TestPrefetchAnswered: prefetch is a long command: ACCEPTED, then the
// final reply with the digest in its status.
func TestPrefetchAnswered(t *testing.T) {
	e := newEnv(t, false)
	e.send(t, &fleetv1.Command{Id: "p1", Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{Spec: &fleetv1.DeploymentSpec{Name: "web"}}}})
	rs := e.await(t, "p1", 2)
	if rs[0].GetResult() != fleetv1.Reply_ACCEPTED || rs[1].GetResult() != fleetv1.Reply_SUCCEEDED || rs[1].GetStatus().GetImageDigest() != "sha256:prefetched" {
		t.Errorf("replies %v, want ACCEPTED then SUCCEEDED with the digest", rs)
	}
}

// TestInputErrorsNameCommandFields: errors of the domain name their
// field under the verb's body, rejections come without ACCEPTED.
func TestInputErrorsNameCommandFields(t *testing.T) {
	sealed := func(b string) *fleetv1.Command_SetCredentials {
		return &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: []byte(b)}}
	}
	plain := &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Credentials: []*fleetv1.Credential{{Registry: "r.example.com"}}}}
	tests := []struct {
		name          string
		requireSealed bool
		cmd           *fleetv1.Command
		wantCode      fleetv1.Reply_Code
		wantField     string
	}{
		{"deploy without spec", false, &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{}}}, fleetv1.Reply_INVALID_ARGUMENT, "deploy.spec"},
		{"deploy rejected", false, &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{Name: "bad"}}}}, fleetv1.Reply_INVALID_ARGUMENT, "deploy.spec.name"},
		{"stop of an unknown deployment", false, &fleetv1.Command{Body: &fleetv1.Command_Stop{Stop: &fleetv1.DeploymentRef{Name: "x"}}}, fleetv1.Reply_NOT_FOUND, "stop.name"},
		{"start failing on the stored spec", false, &fleetv1.Command{Body: &fleetv1.Command_Start{Start: &fleetv1.DeploymentRef{Name: "x"}}}, fleetv1.Reply_INVALID_ARGUMENT, "spec.pullPolicy"},
		{"plaintext credentials refused", true, &fleetv1.Command{Body: plain}, fleetv1.Reply_POLICY_DENIED, "setCredentials.credentials"},
		{"sealed box that does not open", false, &fleetv1.Command{Body: sealed("garbage")}, fleetv1.Reply_INVALID_ARGUMENT, "setCredentials.sealed"},
		{"delete of an unknown registry", false, &fleetv1.Command{Body: &fleetv1.Command_DeleteCredentials{DeleteCredentials: &fleetv1.DeleteCredentials{Registries: []string{"x"}}}}, fleetv1.Reply_INVALID_ARGUMENT, "deleteCredentials.registries[0]"},
		{"prefetch without spec", false, &fleetv1.Command{Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{}}}, fleetv1.Reply_INVALID_ARGUMENT, "prefetch.spec"},
		{"prefetch rejected", false, &fleetv1.Command{Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{Spec: &fleetv1.DeploymentSpec{Name: "bad"}}}}, fleetv1.Reply_INVALID_ARGUMENT, "prefetch.spec.name"},
		{"check of a bad image", false, &fleetv1.Command{Body: &fleetv1.Command_CheckRegistry{CheckRegistry: &fleetv1.CheckRegistry{Image: "X"}}}, fleetv1.Reply_INVALID_ARGUMENT, "checkRegistry.image"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.requireSealed)
			tt.cmd.Id = "c" + string(rune('a'+i))
			e.send(t, tt.cmd)
			r := e.await(t, tt.cmd.Id, 1)[0]
			if r.GetResult() == fleetv1.Reply_ACCEPTED || r.GetCode() != tt.wantCode || r.GetField() != tt.wantField {
				t.Errorf("reply = %v/%v on %q (%s), want %v on %q without ACCEPTED", r.GetResult(), r.GetCode(), r.GetField(), r.GetMessage(), tt.wantCode, tt.wantField)
			}
		})
	}
}

// TestSealedCredentialsOpened: a sealed set-credentials reaches the
// keychain as the credentials inside the box.
func TestSealedCredentialsOpened(t *testing.T) {
	e := newEnv(t, true)
	raw, err := protojson.Marshal(&fleetv1.SetCredentials{Credentials: []*fleetv1.Credential{{Registry: "r.example.com"}}})
	if err != nil {
		t.Fatal(err)
	}
	e.send(t, &fleetv1.Command{Id: "s1", Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: raw}}})
	if r := e.await(t, "s1", 1)[0]; r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("reply = %v, want SUCCEEDED", r)
	}
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	if len(e.creds.set) != 1 || e.creds.set[0].GetRegistry() != "r.example.com" {
		t.Errorf("keychain got %v, want the sealed credential", e.creds.set)
	}
}
