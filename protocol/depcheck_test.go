package protocol_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The protocol is the public contract consoles build against: it must not
// drag in the agent's dependencies.
func TestProtocolDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{"github.com/docker/", "github.com/aws/", "github.com/eclipse/paho", "github.com/mochi-mqtt/", "github.com/nats-io/", "go.etcd.io/bbolt"}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("protocol depends on %s", dep)
			}
		}
	}
}
