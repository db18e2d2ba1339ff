package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recordAPI records the body of POST /v1/commands and answers with a
// finished batch.
type recordAPI struct{ body []byte }

func (r *recordAPI) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch req.Method + " " + req.URL.Path {
	case "POST /v1/commands":
		r.body, _ = io.ReadAll(req.Body)
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"id":"b-1","verb":"prefetch","tenant":"acme","done":false}`))
	case "GET /v1/batches/b-1":
		w.Write([]byte(`{"id":"b-1","verb":"prefetch","tenant":"acme","done":true,"counts":{"SUCCEEDED":1},
			"commands":[{"tenant":"acme","gateway":"gw-1","verb":"prefetch","state":"SUCCEEDED"}]}`))
	default:
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"no route","code":"NOT_FOUND"}`))
	}
}

// TestPrefetch: `cloud-sim prefetch -f spec.yaml` reads the spec as deploy
// does and sends a prefetch command with it to the target.
func TestPrefetch(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "web.yaml")
	os.WriteFile(spec, []byte("name: web\nrevision: 2\nimage: registry.example.com/web:2\n"), 0o600)
	rec := &recordAPI{}
	code, stdout, stderr := run(t, rec, "prefetch", "--tenant", "acme", "--selector", "site=berlin", "-f", spec, "--skip-registry-check")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	var req struct {
		Target            target          `json:"target"`
		Command           json.RawMessage `json:"command"`
		SkipRegistryCheck bool            `json:"skipRegistryCheck"`
	}
	if err := json.Unmarshal(rec.body, &req); err != nil {
		t.Fatalf("%v: %s", err, rec.body)
	}
	want := `{"prefetch":{"spec":{"name":"web","revision":"2","image":"registry.example.com/web:2"}}}`
	if got := strings.ReplaceAll(string(req.Command), " ", ""); got != want || req.Target.Selector != "site=berlin" || !req.SkipRegistryCheck {
		t.Errorf("sent %s\nwant command %s to site=berlin, registry check skipped", rec.body, want)
	}
	if !strings.Contains(stdout, "acme/gw-1") || !strings.Contains(stdout, "prefetch") {
		t.Errorf("no batch table:\n%s", stdout)
	}
	// A field the spec does not have is refused as deploy refuses it.
	os.WriteFile(spec, []byte("name: web\nrevison: 2\n"), 0o600)
	code, _, stderr = run(t, rec, "prefetch", "--gateway", "acme/gw-1", "-f", spec)
	if code == ExitOK || !strings.Contains(stderr, "revison") || !strings.Contains(stderr, "line 2") {
		t.Errorf("exit %d, stderr %q; want the unknown field and its line", code, stderr)
	}
}
