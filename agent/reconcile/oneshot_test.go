package reconcile_test

import (
	"testing"
	"testing/synctest"

	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestOneShotService: a container whose restart policy lets it end (NO,
// ON_FAILURE) and that exits 0 has completed its work, even when no
// service waits for it: a Compose file's `restart: "no"` task beside a
// web service. Before, its exit failed the rollout ("the container exited
// with code 0 before it was ready") and rolled the application back.
// Without a restart policy, or exiting non-zero, it still fails.
func TestOneShotService(t *testing.T) {
	no := &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_NO}
	onFailure := &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_ON_FAILURE, MaxRetries: 2}
	exit := func(code string) map[string]string { return map[string]string{"MODE": "exit", "EXIT_CODE": code} }
	single := func(rp *fleetv1.RestartPolicy, env map[string]string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "task", Revision: 1, Image: "registry.test/web:1", RestartPolicy: rp, Env: env}
	}
	app := func(rp *fleetv1.RestartPolicy, env map[string]string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "task", Revision: 1, Services: map[string]*fleetv1.Service{
			"web":  {Image: "registry.test/web:1"},
			"seed": {Image: "registry.test/web:1", RestartPolicy: rp, Env: env},
		}}
	}
	tests := []struct {
		name      string
		spec      *fleetv1.DeploymentSpec
		wantCode  fleetv1.Reply_Code
		wantPhase fleetv1.DeploymentStatus_Phase
	}{
		{"single, restart no, exit 0", single(no, exit("0")), fleetv1.Reply_OK, fleetv1.DeploymentStatus_EXITED},
		{"single, on-failure, exit 0", single(onFailure, exit("0")), fleetv1.Reply_OK, fleetv1.DeploymentStatus_EXITED},
		{"single, no policy, exit 0", single(nil, exit("0")), fleetv1.Reply_UNHEALTHY, fleetv1.DeploymentStatus_FAILED},
		{"single, restart no, exit 3", single(no, exit("3")), fleetv1.Reply_UNHEALTHY, fleetv1.DeploymentStatus_FAILED},
		{"single, restart no, runs", single(no, nil), fleetv1.Reply_OK, fleetv1.DeploymentStatus_RUNNING},
		{"app, restart no, exit 0", app(no, exit("0")), fleetv1.Reply_OK, fleetv1.DeploymentStatus_RUNNING},
		{"app, no policy, exit 0", app(nil, exit("0")), fleetv1.Reply_UNHEALTHY, fleetv1.DeploymentStatus_FAILED},
		{"app, restart no, exit 1", app(no, exit("1")), fleetv1.Reply_UNHEALTHY, fleetv1.DeploymentStatus_FAILED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, reconcile.Policy{}, false)
				h.fake.Publish("registry.test/web:1", "registry.test/web:1")
				st, err := h.deploy(t, tt.spec)
				if errdefs.Code(err) != tt.wantCode || st.GetPhase() != tt.wantPhase {
					t.Fatalf("deploy = %v, %v (code %v); want %v, %v", st, err, errdefs.Code(err), tt.wantPhase, tt.wantCode)
				}
				if err != nil {
					return
				}
				if st.GetCode() != fleetv1.Reply_OK {
					t.Errorf("status code %v (%s), want OK", st.GetCode(), st.GetMessage())
				}
				// Applied again, the completed task is what it should be:
				// kept, not made and run again.
				before := byService(t, h.fake, "task")
				again, err := h.deploy(t, tt.spec)
				if err != nil || again.GetPhase() != tt.wantPhase {
					t.Errorf("deploy again = %v, %v; want %v", again, err, tt.wantPhase)
				}
				for svc, c := range byService(t, h.fake, "task") {
					if c.ID != before[svc].ID {
						t.Errorf("service %s: container %s replaced by %s; want it kept", svc, before[svc].ID, c.ID)
					}
				}
			})
		})
	}
}
