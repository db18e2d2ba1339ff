package compose

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDocHoldsTheTable: docs/compose.md holds the translator's table; on a
// mismatch the test prints the table to paste.
func TestDocHoldsTheTable(t *testing.T) {
	raw, err := os.ReadFile("../../docs/compose.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), Table()) {
		t.Errorf("docs/compose.md does not hold the translator's table; put this in its conformance section:\n%s", Table())
	}
}

// TestTableCoversTheSpecification: every top-level and service field of
// the Compose specification (compose-go's schema) has a row, so a field
// the specification adds is decided, not refused by default unseen.
func TestTableCoversTheSpecification(t *testing.T) {
	dir := moduleDir(t, "github.com/compose-spec/compose-go/v2")
	raw, err := os.ReadFile(filepath.Join(dir, "schema", "compose-spec.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties map[string]any `json:"properties"`
		Defs       map[string]struct {
			Properties map[string]any `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	var want []string
	for k := range schema.Properties {
		want = append(want, k)
	}
	for _, def := range []string{"service", "container_spec", "workload_spec"} {
		for k := range schema.Defs[def].Properties {
			want = append(want, svc+k)
		}
	}
	for _, def := range []string{"network", "volume"} {
		for k := range schema.Defs[def].Properties {
			want = append(want, def+"s.*."+k)
		}
	}
	slices.Sort(want)
	if len(want) < 100 {
		t.Fatalf("read %d fields from the schema; it has more: has its layout changed?", len(want))
	}
	for _, p := range want {
		if _, ok := lookup(p); !ok {
			t.Errorf("the Compose specification has %s; the table has no row for it", p)
		}
	}
}

// moduleDir finds a module's source as the go command resolves it.
func moduleDir(t *testing.T, module string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", module, err)
	}
	return strings.TrimSpace(string(out))
}
