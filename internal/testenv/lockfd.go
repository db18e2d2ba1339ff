package testenv

import (
	"os"
	"strconv"
	"syscall"
)

// The tests that use Docker or brokers run under
// `flock /tmp/fleet-docker.lock go test …`: flock(1) holds the lock on a
// descriptor that go test, the test binary and every process a test
// starts (mosquitto, nats-server, agents) inherit. A test killed before its
// cleanup left such a process behind, and it held the lock for every other
// run until someone killed it. Marking the inherited descriptors
// close-on-exec keeps the lock with the test binary alone: it is released
// when the binary ends, however it ends.
func init() { closeInheritedOnExec() }

// closeInheritedOnExec marks every open descriptor above stderr
// close-on-exec (those the process opened itself already are: Go opens
// files so).
func closeInheritedOnExec() {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return // not Linux: nothing to do that this can know
	}
	for _, e := range fds {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
