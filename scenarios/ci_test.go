package scenarios

import (
	"os/exec"
	"testing"
)

// TestCIScriptParses keeps .ci/run a valid bash script: CI runs it and
// nothing else, so a broken quote there fails every CI run in 0 s.
func TestCIScriptParses(t *testing.T) {
	out, err := exec.CommandContext(t.Context(), "bash", "-n", "../.ci/run").CombinedOutput()
	if err != nil {
		t.Fatalf("bash -n .ci/run: %v\n%s", err, out)
	}
}
