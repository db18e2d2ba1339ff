package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent's resident memory follows the size of its binary: the AWS SDK
// stays in the fleet-agent-ecr helper (agent/ecrexec), out of the agent.
func TestAgentDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/aws/") {
			t.Errorf("fleet-agent depends on %s; get ECR tokens through agent/ecrexec", dep)
		}
	}
}
