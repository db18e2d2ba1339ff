// Package hostinfo reads facts and load figures of the gateway host from
// /proc and the file system. Values it cannot read are left zero.
package hostinfo

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Facts describes the host for the birth certificate.
func Facts() *fleetv1.Host {
	h := &fleetv1.Host{Os: runtime.GOOS, Arch: runtime.GOARCH, CpuCount: uint32(runtime.NumCPU())}
	h.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = string(bytes.TrimRight(u.Release[:], "\x00"))
	}
	mem := meminfo()
	h.MemoryBytes = mem["MemTotal"]
	return h
}

// Sample fills the load, memory and disk figures of m; disk is that of the
// file system holding dir.
func Sample(m *fleetv1.Metrics, dir string) {
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.Load1, _ = strconv.ParseFloat(f[0], 64)
			m.Load5, _ = strconv.ParseFloat(f[1], 64)
			m.Load15, _ = strconv.ParseFloat(f[2], 64)
		}
	}
	mem := meminfo()
	m.MemoryTotalBytes, m.MemoryAvailableBytes = mem["MemTotal"], mem["MemAvailable"]
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		m.DiskFreeBytes = st.Bavail * uint64(st.Bsize)
		m.DiskTotalBytes = st.Blocks * uint64(st.Bsize)
	}
}

// meminfo returns /proc/meminfo in bytes.
func meminfo() map[string]uint64 {
	out := map[string]uint64{}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out
}
