package api

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

const ecrHost = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"

// fullBirth is a birth of tenant/id with an agent and engine version, one
// deployment per phase given, and a registry credential expiring at exp
// (none when zero).
func fullBirth(c *controller.Controller, tenant, id, agent string, exp time.Time, phases ...fleetv1.DeploymentStatus_Phase) {
	b := &fleetv1.Birth{Session: 1, AgentVersion: agent, Engine: &fleetv1.Engine{Name: "docker", Version: "27.1", Reachable: true}}
	for i, p := range phases {
		b.Deployments = append(b.Deployments, &fleetv1.DeploymentSummary{Name: fmt.Sprintf("app%d", i), Revision: 1, Phase: p})
	}
	if !exp.IsZero() {
		b.Registries = append(b.Registries, &fleetv1.RegistrySummary{Registry: "quay.io/acme", Kind: "basic", ExpiresAt: timestamppb.New(exp)})
	}
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: tenant, Gateway: id}, Message: b, At: time.Now()})
}

func TestOverview(t *testing.T) {
	c := newController(t)
	now := time.Now()
	fullBirth(c, "acme", "gw-1", "1.4.0", now.Add(48*time.Hour), fleetv1.DeploymentStatus_RUNNING, fleetv1.DeploymentStatus_FAILED)
	fullBirth(c, "acme", "gw-2", "1.4.0", now.Add(30*24*time.Hour), fleetv1.DeploymentStatus_RUNNING)
	fullBirth(c, "acme", "gw-3", "", time.Time{})
	fullBirth(c, "beta", "gw-1", "1.3.0", now.Add(time.Hour), fleetv1.DeploymentStatus_FAILED)
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Status, Tenant: "acme", Gateway: "gw-2", Deployment: "app0"},
		Message: &fleetv1.DeploymentStatus{Revision: 1, Phase: fleetv1.DeploymentStatus_RUNNING, Health: fleetv1.HealthCheck_UNHEALTHY, Message: "probe failed"}, At: now.Add(time.Second)})
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: "gw-3"}, Message: &fleetv1.Death{Session: 1}, At: now})
	h := handlerOf(c)
	token := `{"credential": {"registry": "` + ecrHost + `", "ecrToken": {"password": "p", "expiresAt": "` + now.Add(24*time.Hour).UTC().Format(time.RFC3339) + `"}}}`
	if st := call(t, h, "PUT", "/v1/tenants/acme/credentials", token, nil); st != http.StatusOK {
		t.Fatalf("set credential: %d", st)
	}
	var o Overview
	if st := call(t, h, "GET", "/v1/overview?tenant=acme", "", &o); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	if want := (GatewayCounts{Total: 3, Online: 2, Offline: 1}); o.Gateways != want {
		t.Errorf("gateways %+v, want %+v", o.Gateways, want)
	}
	if fmt.Sprint(o.AgentVersions) != "map[1.4.0:2 unknown:1]" || fmt.Sprint(o.EngineVersions) != "map[docker 27.1:3]" {
		t.Errorf("versions %v, engines %v", o.AgentVersions, o.EngineVersions)
	}
	if d := o.Deployments; d.Total != 3 || fmt.Sprint(d.ByPhase) != "map[FAILED:1 RUNNING:2]" || fmt.Sprint(d.ByHealth) != "map[unhealthy:1]" {
		t.Errorf("deployments %+v", d)
	}
	if len(o.Failing) != 2 || o.FailingTotal != 2 || o.Failing[0].Gateway != "gw-2" || o.Failing[0].Health != "unhealthy" || o.Failing[1].Phase != "FAILED" {
		t.Errorf("failing %+v, want gw-2's unhealthy app0 then gw-1's FAILED app1", o.Failing)
	}
	got := []string{}
	for _, e := range o.ExpiringCredentials {
		got = append(got, e.Where+":"+e.Gateway+":"+e.Kind)
	}
	if fmt.Sprint(got) != "[cloud::ecr-token gateway:gw-1:basic]" || o.ExpiringCredentialsTotal != 2 {
		t.Errorf("expiring %v (total %d), want the cloud's token, then gw-1's", got, o.ExpiringCredentialsTotal)
	}
	if o.ActiveRollouts == nil {
		t.Error("activeRollouts is null, want []")
	}
	var all Overview
	call(t, h, "GET", "/v1/overview", "", &all)
	if all.Gateways.Total != 4 || all.FailingTotal != 3 || len(all.ExpiringCredentials) != 3 || all.ExpiringCredentials[0].Tenant != "beta" {
		t.Errorf("all tenants: %+v", all)
	}
}

// BenchmarkOverview: the overview of 10,000 gateways, a deployment each.
func BenchmarkOverview(b *testing.B) {
	c := newController(b)
	for i := 1; i <= 10000; i++ {
		phase := fleetv1.DeploymentStatus_RUNNING
		if i%100 == 0 {
			phase = fleetv1.DeploymentStatus_FAILED
		}
		fullBirth(c, "sim", fmt.Sprintf("sim-%d", i), "1.4.0", time.Time{}, phase)
	}
	h := handlerOf(c)
	b.ReportAllocs()
	for b.Loop() {
		call(b, h, "GET", "/v1/overview", "", nil)
	}
}
