package scenarios

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/cli"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestAPIAttacks performs, against a serve started with its defaults (no
// token given), what a local process or a web page the operator opens
// could do to the API, and checks each is refused and changes nothing;
// then the operator's CLI, which finds the token in the data directory,
// still works.
func TestAPIAttacks(t *testing.T) {
	c := startCloud(t, 1)
	online := true
	onlineSims := func() int { return len(c.Controller.Gateways(inventory.Filter{Tenant: "sim", Online: &online})) }
	testenv.Eventually(t, "the simulated gateway online", func() bool { return onlineSims() == 1 })
	u, _ := url.Parse(c.APIURL)
	deploy := `{"target": {"tenant": "sim", "all": true}, "skipRegistryCheck": true,
		"command": {"deploy": {"spec": {"name": "miner", "revision": 1, "image": "evil.example/miner:1"}}}}`
	tests := []struct {
		name          string
		method, path  string
		body          string
		header        map[string]string
		host          string // Host header; the API's own when empty
		wantForbidden bool   // 403, else 401 or 415
	}{
		{name: "cross-site text/plain POST deploying with skipRegistryCheck", method: "POST", path: "/v1/commands", body: deploy,
			header: map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, wantForbidden: true},
		{name: "cross-origin POST from an older browser (Origin only)", method: "POST", path: "/v1/commands", body: deploy,
			header: map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, wantForbidden: true},
		{name: "same-site page on another port of localhost", method: "POST", path: "/v1/commands", body: deploy,
			header: map[string]string{"Content-Type": "text/plain", "Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}, wantForbidden: true},
		{name: "DNS rebinding: a same-origin request to evil.example resolved to loopback", method: "POST", path: "/v1/commands", body: deploy,
			host: "evil.example:" + u.Port(), header: map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example:" + u.Port(), "Sec-Fetch-Site": "same-origin"}, wantForbidden: true},
		{name: "DNS rebinding: reading the inventory", method: "GET", path: "/v1/gateways", host: "evil.example:" + u.Port(), wantForbidden: true},
		{name: "local process: unauthenticated provision", method: "POST", path: "/v1/gateways/acme/gw-new/provision", body: `{}`,
			header: map[string]string{"Content-Type": "application/json"}},
		{name: "local process: unauthenticated re-key of a live gateway", method: "POST", path: "/v1/gateways/sim/sim-1/provision", body: `{}`,
			header: map[string]string{"Content-Type": "application/json"}},
		{name: "local process: unauthenticated deploy", method: "POST", path: "/v1/commands", body: deploy,
			header: map[string]string{"Content-Type": "application/json"}},
		{name: "local process: unauthenticated read", method: "GET", path: "/v1/gateways"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, c.APIURL+tt.path, strings.NewReader(tt.body))
			if tt.body == "" {
				req.Body, req.ContentLength = nil, 0
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			if tt.host != "" {
				req.Host = tt.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			refused := resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusUnsupportedMediaType
			if tt.wantForbidden {
				refused = resp.StatusCode == http.StatusForbidden
			}
			if !refused {
				t.Errorf("got %d %s, want it refused (403 for a foreign page or host, else 401)", resp.StatusCode, bytes.TrimSpace(body))
			}
		})
	}
	if b := c.Controller.Batches(10); len(b) != 0 {
		t.Errorf("the attacks created %d command batches, want none", len(b))
	}
	if _, ok := c.Controller.Gateway("acme", "gw-new"); ok || onlineSims() != 1 {
		t.Errorf("the attacks provisioned acme/gw-new (%v) or took the re-keyed sim-1 offline (%d online)", ok, onlineSims())
	}

	// The operator's CLI on the same host finds the token serve made in
	// its data directory.
	var out, errs bytes.Buffer
	env := cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errs, Getenv: func(string) string { return "" }}
	if code := cli.Run(context.Background(), env, []string{"provision", "acme/gw-2", "--api", c.APIURL, "--data", c.dataDir}); code != 0 {
		t.Fatalf("provision with the token of --data: exit %d\n%s%s", code, out.String(), errs.String())
	}
	if code := cli.Run(context.Background(), env, []string{"gateways", "--tenant", "sim", "--api", c.APIURL, "--data", c.dataDir}); code != 0 || !strings.Contains(out.String(), "sim-1") {
		t.Fatalf("gateways with the token of --data: exit %d\n%s%s", code, out.String(), errs.String())
	}
}
