package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestInheritedDescriptorsNotPassedOn: a descriptor this process inherited
// without close-on-exec (as flock(1) passes the Docker lock) does not
// reach the processes a test starts (an orphaned mosquitto held the lock
// for every run after).
func TestInheritedDescriptorsNotPassedOn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// As flock(1) leaves it: open without O_CLOEXEC.
	fd, err := syscall.Open(path, syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	closeInheritedOnExec()
	out, err := exec.Command("ls", "-l", "/proc/self/fd/").CombinedOutput()
	if err != nil {
		t.Skipf("ls /proc/self/fd: %v", err)
	}
	if strings.Contains(string(out), path) {
		t.Errorf("a started process has descriptor %s (%s):\n%s", strconv.Itoa(fd), path, out)
	}
}
