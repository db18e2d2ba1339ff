package api

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEListsTheRoutes: the API table of cloud-sim/README.md is the
// routes the API serves; on a mismatch the test prints the table to paste.
func TestREADMEListsTheRoutes(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), Reference()) {
		t.Errorf("cloud-sim/README.md does not hold the route table the API serves; put this in its HTTP API section:\n%s", Reference())
	}
}
