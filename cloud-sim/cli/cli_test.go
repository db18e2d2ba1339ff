package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeAPI answers "METHOD /path" with a canned status and JSON body.
type fakeAPI map[string]struct {
	status int
	body   string
}

func (f fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	resp, ok := f[r.Method+" "+r.URL.Path]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"no route ` + r.URL.Path + `","code":"NOT_FOUND"}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if resp.status != 0 {
		w.WriteHeader(resp.status)
	}
	w.Write([]byte(resp.body))
}

// run runs the CLI against api (which may be nil) and returns the exit
// code, stdout and stderr.
func run(t *testing.T, api http.Handler, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	base := "http://127.0.0.1:1" // nothing listens: verbs that call it fail
	if api != nil {
		srv := httptest.NewServer(api)
		t.Cleanup(srv.Close)
		base = srv.URL
	}
	var out, errs bytes.Buffer
	env := Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errs, Getenv: func(k string) string {
		if k == "CLOUD_SIM_API" {
			return base
		}
		return ""
	}}
	code = Run(context.Background(), env, args)
	return code, out.String(), errs.String()
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{[]string{}, "Usage:"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"gateways", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"deploy", "--count", "3"}, "unknown flag: --count"}, // a flag of `fleet`
		{[]string{"stop", "--remove-image", "--gateway", "a/b", "web"}, "unknown flag: --remove-image"},
		{[]string{"rollout", "list", "--watch"}, "unknown flag: --watch"},
		{[]string{"gateways", "--tenant"}, "flag needs an argument"},
		{[]string{"deploy", "--wait", "soon", "--all"}, `invalid argument "soon"`},
		{[]string{"gateways", "extra"}, `unexpected argument "extra"`},
		{[]string{"gateways", "-o", "yaml"}, `-o "yaml": use table or json`},
		{[]string{"gateway"}, "give one gateway as TENANT/ID"},
		{[]string{"gateway", "no-slash"}, "write TENANT/ID"},
		{[]string{"deploy", "-f", "spec.yaml"}, "--gateway TENANT/ID"},
		{[]string{"deploy", "--gateway", "a/b", "--gateway", "c/d", "-f", "x"}, "one tenant"},
		{[]string{"stop", "--gateway", "a/b"}, "give the deployment name"},
		{[]string{"rollout"}, "say create -f FILE, list"},
		{[]string{"rollout", "bogus"}, `unknown "bogus"`},
		{[]string{"rollout", "status"}, "give the rollout id"},
		{[]string{"rollout", "create"}, "-f FILE is required"},
		{[]string{"credentials"}, "say set, list or delete"},
		{[]string{"credentials", "set", "--tenant", "t"}, "--tenant and --registry are required"},
		{[]string{"credentials", "set", "--tenant", "t", "--registry", "r", "--username", "u"}, "--password-stdin"},
		{[]string{"credentials", "list"}, "--tenant is required"},
		{[]string{"check-registry", "--tenant", "t"}, "one IMAGE"},
		{[]string{"batch"}, "give the batch id"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, nil, tt.args...)
			if code != ExitUsage {
				t.Errorf("exit %d, want %d (usage)\nstdout: %s\nstderr: %s", code, ExitUsage, stdout, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.want)
			}
		})
	}
}

func TestHelpListsSubVerbs(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"gateways", "deploy", "rollout", "credentials", "completion"}},
		{[]string{"rollout", "--help"}, []string{"create", "list", "status", "pause", "resume", "cancel"}},
		{[]string{"help", "rollout"}, []string{"create", "list", "status", "pause", "resume", "cancel"}},
		{[]string{"credentials", "--help"}, []string{"set", "list", "delete"}},
		{[]string{"rollout", "create", "--help"}, []string{"--file", "-f", "--watch", "--api", "--output"}},
		{[]string{"deploy", "-h"}, []string{"--gateway TENANT/ID", "--skip-registry-check", "TARGET:"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, nil, tt.args...)
			if code != ExitOK {
				t.Fatalf("exit %d, want 0\n%s", code, stderr)
			}
			for _, w := range tt.want {
				if !regexp.MustCompile(`(?m)(^|\s)` + regexp.QuoteMeta(w) + `(\s|,|$)`).MatchString(stdout) {
					t.Errorf("help lacks %q:\n%s", w, stdout)
				}
			}
		})
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, "completion", shell)
			if code != ExitOK || !strings.Contains(stdout, "cloud-sim") {
				t.Errorf("completion %s: exit %d, %d bytes\n%s", shell, code, len(stdout), stderr)
			}
		})
	}
}

const gatewayList = `{"count":4,"online":3,"stale":0,"gateways":[
	{"tenant":"sim","id":"sim-10","online":true},
	{"tenant":"sim","id":"sim-2","online":true},
	{"tenant":"acme","id":"gw-1","online":false},
	{"tenant":"sim","id":"sim-1","online":true}]}`

func TestGatewaysTableInNaturalOrder(t *testing.T) {
	api := fakeAPI{"GET /v1/gateways": {body: gatewayList}}
	code, stdout, stderr := run(t, api, "gateways")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff([]string{"GATEWAY", "gw-1", "sim-1", "sim-2", "sim-10", "gateways,"}, column(stdout, 1)); diff != "" {
		t.Errorf("gateway column (-want +got):\n%s\n%s", diff, stdout)
	}
	// -o json is the API's body as it came.
	_, stdout, _ = run(t, api, "gateways", "-o", "json")
	if strings.TrimSpace(stdout) != strings.TrimSpace(gatewayList) {
		t.Errorf("-o json = %s, want the API's body", stdout)
	}
}

func TestCompleteGateways(t *testing.T) {
	api := fakeAPI{"GET /v1/gateways": {body: gatewayList}}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "gateway", ""}, []string{"acme/gw-1", "sim/sim-1", "sim/sim-2", "sim/sim-10"}},
		{[]string{"__complete", "gateway", "sim/sim-1"}, []string{"sim/sim-1", "sim/sim-10"}},
		{[]string{"__complete", "stop", "--gateway", "a"}, []string{"acme/gw-1"}},
		{[]string{"__complete", "deploy", "--tenant", ""}, []string{"acme", "sim"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, api, tt.args...)
			// The last line is cobra's ":directive".
			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			if code != ExitOK {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			if diff := cmp.Diff(tt.want, lines[:len(lines)-1]); diff != "" {
				t.Errorf("completions (-want +got):\n%s", diff)
			}
		})
	}
}

const batchFailed = `{"id":"b-1","verb":"deploy","tenant":"sim","done":true,"failed":1,
	"counts":{"SUCCEEDED":2,"REJECTED":1},
	"commands":[
		{"tenant":"sim","gateway":"sim-10","verb":"deploy","state":"SUCCEEDED"},
		{"tenant":"sim","gateway":"sim-9","verb":"deploy","state":"REJECTED","code":"FAILED_PRECONDITION","message":"older revision"},
		{"tenant":"sim","gateway":"sim-1","verb":"deploy","state":"SUCCEEDED"}]}`

func TestBatch(t *testing.T) {
	api := fakeAPI{"GET /v1/batches/b-1": {body: batchFailed}}
	code, stdout, stderr := run(t, api, "batch", "b-1")
	if code != ExitFailed {
		t.Errorf("exit %d, want %d: a gateway failed\n%s", code, ExitFailed, stderr)
	}
	if diff := cmp.Diff([]string{"GATEWAY", "sim/sim-1", "sim/sim-9", "sim/sim-10", "batch"}, column(stdout, 0)); diff != "" {
		t.Errorf("gateway column (-want +got):\n%s\n%s", diff, stdout)
	}
	if !strings.Contains(stdout, "batch b-1: 1 rejected, 2 succeeded") {
		t.Errorf("no summary line:\n%s", stdout)
	}
	if stderr != "" {
		t.Errorf("stderr = %q, want nothing: the table says what failed", stderr)
	}
}

func TestAPIErrorExitsFailed(t *testing.T) {
	code, _, stderr := run(t, fakeAPI{}, "gateway", "sim/nope")
	if code != ExitFailed || !strings.Contains(stderr, "cloud-sim gateway: NOT_FOUND") {
		t.Errorf("exit %d, stderr %q; want %d and the API's error", code, stderr, ExitFailed)
	}
}

func TestRollout(t *testing.T) {
	const paused = `{"id":"r-1","spec":{"tenant":"sim","deployment":{"name":"web","revision":2}},"state":"PAUSED","phase":"BATCHES","total":3,"active":true}`
	const failed = `{"id":"r-2","spec":{"tenant":"sim","deployment":{"name":"web","revision":2}},"state":"FAILED","phase":"DONE","total":3,
		"counts":{"SUCCEEDED":1,"FAILED":2},
		"failing":[{"gateway":"sim-10","state":"FAILED","code":"UNAVAILABLE"},{"gateway":"sim-3","state":"FAILED"}]}`
	api := fakeAPI{
		"POST /v1/rollouts/r-1/pause": {body: paused},
		"GET /v1/rollouts/r-2":        {body: failed},
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string // stdout
	}{
		{"pause", []string{"rollout", "pause", "r-1"}, ExitOK, "rollout r-1: PAUSED\n"},
		// The API's JSON, not the plain line.
		{"pause json", []string{"rollout", "pause", "r-1", "-o", "json"}, ExitOK, paused + "\n"},
		{"status failed", []string{"rollout", "status", "r-2", "-o", "json"}, ExitFailed, failed + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, api, tt.args...)
			if code != tt.wantCode || stdout != tt.want {
				t.Errorf("exit %d, stdout %q; want %d, %q\nstderr: %s", code, stdout, tt.wantCode, tt.want, stderr)
			}
		})
	}
	_, stdout, _ := run(t, api, "rollout", "status", "r-2")
	i, j := strings.Index(stdout, "sim-3 "), strings.Index(stdout, "sim-10 ")
	if i < 0 || j < 0 || i > j {
		t.Errorf("failing gateways not in natural order (sim-3 before sim-10):\n%s", stdout)
	}
}

// column returns the n-th whitespace-separated field of each non-empty line.
func column(s string, n int) []string {
	var col []string
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > n {
			col = append(col, f[n])
		}
	}
	return col
}
