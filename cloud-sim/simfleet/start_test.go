package simfleet

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestStartSharesKeys: a fleet's gateways, built several at a time, all
// start, and share the fleet's one at-rest key and sealing key pair (in
// its state directory) instead of making two key files each.
func TestStartSharesKeys(t *testing.T) {
	u, err := url.Parse(brokertest.EmbeddedInMemory(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f, err := Start(context.Background(), Config{BrokerURL: u, Tenant: "sim", Count: 40, StateDir: dir, Scheme: topic.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if got := len(f.IDs()); got != 40 {
		t.Errorf("%d gateways, want 40", got)
	}
	for _, name := range []string{"at-rest.key", "seal.key"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("the fleet's %s: %v", name, err)
		}
		for _, id := range f.IDs() {
			if _, err := os.Stat(filepath.Join(dir, id, name)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s has its own %s (%v), want the fleet's", id, name, err)
			}
		}
	}
}
