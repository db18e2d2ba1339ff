package rollout

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// TestStoredRollout: a rollout is stored as before its states were typed
// and its records moved to package state, and restored as it was.
func TestStoredRollout(t *testing.T) {
	r := &Rollout{ID: "r-1", State: Running, Phase: PhaseCanary, CreatedAt: t0, Batch: 1, BatchSize: 2,
		Spec: Spec{Tenant: "acme", Targets: Targets{All: true}, Deployment: json.RawMessage(`{"name":"web"}`),
			Strategy: Strategy{Canary: &Canary{Count: 1, Soak: Duration(10 * time.Minute)}, GatewayTimeout: Duration(time.Minute),
				Exponential: &Exponential{BaseRate: 10, IncrementFactor: 2, StepEvery: 5}},
			Abort: AbortCriteria{Rollback: true}}}
	raw, err := json.Marshal(r.stored())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"r-1","spec":{"tenant":"acme","targets":{"all":true},"deployment":{"name":"web"},` +
		`"strategy":{"canary":{"count":1,"soak":"10m0s"},"exponential":{"baseRate":10,"incrementFactor":2,"stepEvery":5},"gatewayTimeout":"1m0s"},` +
		`"abort":{"rollback":true}},"state":"RUNNING","phase":"CANARY","createdAt":"2026-11-30T12:00:00Z","batch":1,"batchSize":2,"notified":0}`
	if string(raw) != want {
		t.Errorf("stored\n got %s\nwant %s", raw, want)
	}
	var s state.Rollout
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if back := restoreRollout(&s); !reflect.DeepEqual(back, r) {
		t.Errorf("restored %+v, want %+v", back, r)
	}
	g := &Gateway{Rollout: "r-1", Gateway: "gw-1", State: GatewayInProgress, Attempt: 1, CommandID: "ro-1", DispatchedAt: t0}
	raw, _ = json.Marshal(g.stored())
	if want := `{"rollout":"r-1","gateway":"gw-1","state":"IN_PROGRESS","batch":0,"attempt":1,"commandId":"ro-1","dispatchedAt":"2026-11-30T12:00:00Z"}`; string(raw) != want {
		t.Errorf("stored gateway\n got %s\nwant %s", raw, want)
	}
}
