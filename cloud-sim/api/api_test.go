package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/egress"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

const testToken = "t0ken"

// newAPI serves the API of a controller (not connected to a broker) whose
// inventory holds acme/gw-1, requiring testToken, answering to
// 127.0.0.1 and localhost with the server's port. server, when not nil,
// adjusts the http.Server (its timeouts) before it starts. Its registry
// check may reach the destinations in checkAllow (loopback test registries).
func newAPI(t *testing.T, cfg Config, server func(*http.Server), checkAllow ...string) (*httptest.Server, *controller.Controller) {
	t.Helper()
	c := newController(t, checkAllow...)
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "acme", Gateway: "gw-1"}, Message: &fleetv1.Birth{Session: 1}, At: time.Now()})
	srv := httptest.NewUnstartedServer(nil)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	cfg.Controller, cfg.Token = c, testToken
	cfg.AllowedHosts = append(cfg.AllowedHosts, fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("localhost:%d", port))
	srv.Config.Handler = New(cfg)
	if server != nil {
		server(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, c
}

// newController is a controller not connected to a broker, with an empty
// inventory, whose registry check may reach checkAllow.
func newController(tb testing.TB, checkAllow ...string) *controller.Controller {
	tb.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(st.Close)
	dir := tb.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "k"), filepath.Join(dir, "s"))
	if err != nil {
		tb.Fatal(err)
	}
	check, err := egress.New("--registry-check-allow", checkAllow)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := controller.New(context.Background(), controller.Config{Store: st, Keys: keys, RegistryCheck: check})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// TestErrorStatus: a client tells a refusal by the registry (422) from a
// missing gateway (404) by the status, though both have code NOT_FOUND.
func TestErrorStatus(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	u, _ := url.Parse(reg.URL)
	srv, _ := newAPI(t, Config{}, nil, u.Host)
	deploy := `{"target": {"tenant": "acme", "gateways": ["gw-1"]}, "command": {"deploy": {"spec": {"name": "web", "revision": 1, "image": "` + u.Host + `/team/web:1"}}}}`
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantCode                 string
	}{
		{"no such image in the registry", "POST", "/v1/commands", deploy, http.StatusUnprocessableEntity, "NOT_FOUND"},
		{"no such gateway", "GET", "/v1/gateways/acme/gw-2", "", http.StatusNotFound, "NOT_FOUND"},
		{"no such gateway as a target", "POST", "/v1/commands", strings.Replace(deploy, `"gw-1"`, `"gw-2"`, 1), http.StatusNotFound, "NOT_FOUND"},
		{"no such rollout", "GET", "/v1/rollouts/r-nope", "", http.StatusNotFound, "NOT_FOUND"},
		{"bad body", "POST", "/v1/commands", `{"nope": 1}`, http.StatusBadRequest, "INVALID_ARGUMENT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer "+testToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body Error
			_ = json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != tt.wantStatus || body.Code != tt.wantCode {
				t.Errorf("got %d %s (%s), want %d %s", resp.StatusCode, body.Code, body.Error, tt.wantStatus, tt.wantCode)
			}
		})
	}
}
