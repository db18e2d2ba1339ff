package hostinfo_test

import (
	"runtime"
	"testing"

	"github.com/fleet-agent/fleet/agent/hostinfo"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestFactsAndSample(t *testing.T) {
	h := hostinfo.Facts()
	if h.GetOs() != runtime.GOOS || h.GetCpuCount() == 0 || h.GetHostname() == "" {
		t.Errorf("Facts = %v, want os, cpu count and hostname", h)
	}
	if runtime.GOOS == "linux" && h.GetMemoryBytes() == 0 {
		t.Error("Facts: memory is zero on linux")
	}
	var m fleetv1.Metrics
	hostinfo.Sample(&m, t.TempDir())
	if runtime.GOOS == "linux" && (m.MemoryAvailableBytes == 0 || m.DiskTotalBytes == 0) {
		t.Errorf("Sample = %v, want memory and disk figures", &m)
	}
}
