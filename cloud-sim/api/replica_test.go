package api

import (
	"net/http"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestReplicaCountsIngested: GET /v1/replica counts the publications this
// replica applied; a status of a gateway that never announced itself is
// not applied, so not counted.
func TestReplicaCountsIngested(t *testing.T) {
	c := newController(t)
	h := handlerOf(c)
	now := time.Now()
	ingest := []mqttclient.Received{
		{Topic: topic.Topic{Kind: topic.Status, Tenant: "acme", Gateway: "gw-2", Deployment: "web"}, Message: &fleetv1.DeploymentStatus{Revision: 1}, At: now},
		{Topic: topic.Topic{Kind: topic.Birth, Tenant: "acme", Gateway: "gw-1"}, Message: &fleetv1.Birth{Session: 1}, At: now},
		{Topic: topic.Topic{Kind: topic.Status, Tenant: "acme", Gateway: "gw-1", Deployment: "web"}, Message: &fleetv1.DeploymentStatus{Revision: 1}, At: now},
	}
	for _, tc := range []struct {
		name    string
		ingest  []mqttclient.Received
		applied uint64
	}{
		{name: "started", applied: 0},
		{name: "status of an unknown gateway", ingest: ingest[:1], applied: 0},
		{name: "birth and status", ingest: ingest[1:], applied: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range tc.ingest {
				c.Ingest(r)
			}
			var got Replica
			if st := call(t, h, "GET", "/v1/replica", "", &got); st != http.StatusOK {
				t.Fatalf("status %d, want 200", st)
			}
			if want := (Replica{Ingested: tc.applied}); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}
