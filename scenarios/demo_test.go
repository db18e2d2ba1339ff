package scenarios

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestDemo runs what `make demo` runs: the static cloud-sim binary's demo,
// with a real agent on the local Docker Engine and simulated gateways.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cloud-sim and runs the whole demo")
	}
	bin := testenv.Binary(t, "cloud-sim") // static, as make demo builds it
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--sim-count", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-sim demo: %v\n%s", err, out)
	}
	for _, want := range []string{"11 gateways, 11 online", "credential for", "answers GET", "demo finished"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}

	// Without Docker it says so and runs the simulated part.
	noDocker := exec.CommandContext(ctx, bin, "demo", "--sim-count", "5")
	noDocker.Env = append(os.Environ(), "DOCKER_HOST=unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))
	out, err = noDocker.CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-sim demo without Docker: %v\n%s", err, out)
	}
	for _, want := range []string{"Docker Engine not available", "5 gateways, 5 online", "demo finished"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output without Docker lacks %q:\n%s", want, out)
		}
	}
}
