package engine_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// hangUpEngine is an engine socket that answers the client's version
// negotiation (/_ping) and hangs up on every other request once it has
// read it, as a Docker Engine that stops or restarts does to the requests
// it had.
func hangUpEngine(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hangup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "docker.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_ping" {
			w.Header().Set("Api-Version", "1.45")
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

// TestEngineGoneIsUnavailable: an engine that is away is
// RUNTIME_UNAVAILABLE (a retryable kind: the agent keeps the desired state
// and applies it when the engine is back) whether its socket is missing
// or it hangs up on a request, as a stopping or restarting engine does.
// The Docker client reports the second as "error during connect: …: EOF";
// this pins that mapErr takes it as unavailable, which the agent's
// "recorded as stopped" replies rely on.
func TestEngineGoneIsUnavailable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "docker.sock")
	tests := []struct {
		name string
		host string
	}{
		{"socket missing", "unix://" + missing},
		{"engine hangs up", "unix://" + hangUpEngine(t)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := engine.NewDocker(tt.host, "test/unreachable", nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
			defer cancel()
			err = d.Stop(ctx, "app", nil)
			if got := errdefs.Code(err); got != fleetv1.Reply_RUNTIME_UNAVAILABLE {
				t.Errorf("Stop: code %v (%v), want RUNTIME_UNAVAILABLE", got, err)
			}
			if _, err := d.List(ctx); errdefs.Code(err) != fleetv1.Reply_RUNTIME_UNAVAILABLE {
				t.Errorf("List: code %v (%v), want RUNTIME_UNAVAILABLE", errdefs.Code(err), err)
			}
		})
	}
}
