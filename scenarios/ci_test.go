package scenarios

import (
	"os/exec"
	"testing"
)

// TestCIScriptParses keeps .ci/run and the script make test runs valid
// bash: CI runs them and nothing else, so a broken quote there fails every
// CI run in 0 s.
func TestCIScriptParses(t *testing.T) {
	for _, script := range []string{"../.ci/run", "../scripts/test.sh"} {
		out, err := exec.CommandContext(t.Context(), "bash", "-n", script).CombinedOutput()
		if err != nil {
			t.Errorf("bash -n %s: %v\n%s", script, err, out)
		}
	}
}
