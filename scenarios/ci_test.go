package scenarios

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
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

// TestSaidSummary: make test's last lines, for each failed scenario, are
// its own lines (scripts/said.awk), its last 12, and none of a passing
// test's or of the logs around them.
func TestSaidSummary(t *testing.T) {
	many := "=== RUN   TestMany\n"
	for i := range 15 {
		many += fmt.Sprintf("    many_test.go:%d: line %d\n", i+1, i+1)
	}
	many += "--- FAIL: TestMany (1.00s)\n"
	var wantMany []string
	for i := 4; i <= 15; i++ {
		wantMany = append(wantMany, fmt.Sprintf("    many_test.go:%d: line %d", i, i))
	}
	tests := []struct {
		name, log string
		want      []string
	}{
		{"all passed", "=== RUN   TestA\n    a_test.go:10: a log line\n--- PASS: TestA (0.10s)\nPASS\n", nil},
		{"a failure among logs and subtests", `=== RUN   TestA
    a_test.go:10: passing, not shown
--- PASS: TestA (0.10s)
=== RUN   TestB
    b_test.go:20: image pushed
time=2026-12-01T23:55:19.982Z level=INFO msg="gracefully stopping server"
=== RUN   TestB/sub
        testenv.go:5: from a subtest
    --- FAIL: TestB/sub (0.20s)
    b_test.go:22: healthy deploy = x, want SUCCEEDED
time=2026-12-01T23:55:20.018Z level=INFO msg="mochi mqtt server stopped"
--- FAIL: TestB (8.74s)
=== RUN   TestC
--- SKIP: TestC (0.00s)
FAIL
`, []string{"== TestB said:", "    b_test.go:20: image pushed", "        testenv.go:5: from a subtest", "    b_test.go:22: healthy deploy = x, want SUCCEEDED"}},
		{"the last 12 lines", many, append([]string{"== TestMany said:"}, wantMany...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), "awk", "-f", "../scripts/said.awk")
			cmd.Stdin = strings.NewReader(tt.log)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("awk: %v", err)
			}
			var got []string
			if s := strings.TrimSuffix(string(out), "\n"); s != "" {
				got = strings.Split(s, "\n")
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("said =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
