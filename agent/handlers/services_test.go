package handlers_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/handlers"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// services is a fake reconciler of applications' services: the service
// "db" of "shop" exists, nothing else.
type services struct {
	removed []bool // removeVolumes of each RemoveWith
}

func (s *services) find(name, svc string) error {
	if name != "shop" {
		return &errdefs.FieldError{Field: "name", Kind: errdefs.ErrNotFound, Msg: "no such deployment"}
	}
	if svc != "db" {
		return &errdefs.FieldError{Field: "service", Kind: errdefs.ErrNotFound, Msg: "no such service"}
	}
	return nil
}

func (s *services) StopService(_ context.Context, name, svc string) (*fleetv1.DeploymentStatus, error) {
	return &fleetv1.DeploymentStatus{Name: name, Phase: fleetv1.DeploymentStatus_STOPPED}, s.find(name, svc)
}

func (s *services) StartService(_ context.Context, name, svc string, _ func()) (*fleetv1.DeploymentStatus, error) {
	return &fleetv1.DeploymentStatus{Name: name, Phase: fleetv1.DeploymentStatus_RUNNING}, s.find(name, svc)
}

func (s *services) RestartService(ctx context.Context, name, svc string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return s.StartService(ctx, name, svc, accepted)
}

func (s *services) RemoveWith(_ context.Context, name string, _, removeVolumes bool) error {
	s.removed = append(s.removed, removeVolumes)
	return s.find(name, "db")
}

// newServicesEnv is newEnv with svcs serving the commands on one service.
func newServicesEnv(t *testing.T, svcs handlers.Services) *env {
	t.Helper()
	st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pub: &publisher{}, deps: &deployments{release: make(chan struct{})}, creds: &credentials{}}
	cfg := handlers.Config{Deployments: e.deps, Credentials: e.creds, OpenSealed: func(b []byte) ([]byte, error) { return b, nil }}
	if svcs != nil {
		cfg.Services = svcs
	}
	verbs, err := handlers.New(cfg)
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

// TestServiceVerbs: start, stop and restart of one service reach the
// services' calls and name their fields (start.service); remove with
// removeVolumes too; without anything serving them they are UNSUPPORTED.
func TestServiceVerbs(t *testing.T) {
	ref := func(name, svc string) *fleetv1.DeploymentRef { return &fleetv1.DeploymentRef{Name: name, Service: svc} }
	tests := []struct {
		name      string
		serve     bool
		cmd       *fleetv1.Command
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"start of a service", true, &fleetv1.Command{Body: &fleetv1.Command_Start{Start: ref("shop", "db")}}, fleetv1.Reply_OK, ""},
		{"start of an unknown service", true, &fleetv1.Command{Body: &fleetv1.Command_Start{Start: ref("shop", "cache")}}, fleetv1.Reply_NOT_FOUND, "start.service"},
		{"stop of an unknown service", true, &fleetv1.Command{Body: &fleetv1.Command_Stop{Stop: ref("shop", "cache")}}, fleetv1.Reply_NOT_FOUND, "stop.service"},
		{"restart of a service of an unknown deployment", true, &fleetv1.Command{Body: &fleetv1.Command_Restart{Restart: ref("x", "db")}}, fleetv1.Reply_NOT_FOUND, "restart.name"},
		{"remove with volumes", true, &fleetv1.Command{Body: &fleetv1.Command_Remove{Remove: &fleetv1.DeploymentRef{Name: "shop", RemoveVolumes: true}}}, fleetv1.Reply_OK, ""},
		{"service not served", false, &fleetv1.Command{Body: &fleetv1.Command_Stop{Stop: ref("shop", "db")}}, fleetv1.Reply_UNSUPPORTED, ""},
		{"volumes not served", false, &fleetv1.Command{Body: &fleetv1.Command_Remove{Remove: &fleetv1.DeploymentRef{Name: "shop", RemoveVolumes: true}}}, fleetv1.Reply_UNSUPPORTED, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svcs := &services{}
			var served handlers.Services
			if tt.serve {
				served = svcs
			}
			e := newServicesEnv(t, served)
			tt.cmd.Id = "s" + string(rune('a'+i))
			e.send(t, tt.cmd)
			rs := e.await(t, tt.cmd.Id, 1)
			r := rs[len(rs)-1]
			if r.GetResult() == fleetv1.Reply_ACCEPTED {
				r = e.await(t, tt.cmd.Id, 2)[1]
			}
			if r.GetCode() != tt.wantCode || r.GetField() != tt.wantField {
				t.Errorf("reply = %v/%v on %q (%s), want %v on %q", r.GetResult(), r.GetCode(), r.GetField(), r.GetMessage(), tt.wantCode, tt.wantField)
			}
			if tt.serve && tt.cmd.GetRemove() != nil && (len(svcs.removed) != 1 || !svcs.removed[0]) {
				t.Errorf("RemoveWith calls %v, want one with removeVolumes", svcs.removed)
			}
		})
	}
}
