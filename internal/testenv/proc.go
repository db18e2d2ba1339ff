package testenv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ErrExited is the error of a wait on a process that ended first.
var ErrExited = errors.New("process ended")

// Proc is a started process whose end is watched, so that a wait on it
// fails at once, with its log, when it has ended.
type Proc struct {
	name string
	cmd  *exec.Cmd
	logs *LogBuffer
	done chan struct{}
}

// StartProc starts cmd, named name in errors, with its output in logs.
func StartProc(name string, cmd *exec.Cmd, logs *LogBuffer) (*Proc, error) {
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{name: name, cmd: cmd, logs: logs, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Cmd is the started command.
func (p *Proc) Cmd() *exec.Cmd { return p.cmd }

// Exited tells whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Await polls ready until it holds. It fails with ErrExited and the log
// as soon as the process has ended, which it checks after every poll:
// a port the process was to listen on answers too when another process
// took it. It fails after Timeout.
func (p *Proc) Await(what string, ready func() bool) error {
	deadline := time.Now().Add(Timeout)
	for {
		ok := ready()
		if p.Exited() {
			return fmt.Errorf("%w: %s (%s) while waiting for: %s; its log:\n%s", ErrExited, p.name, p.cmd.ProcessState, what, p.logs.String())
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for: %s; %s's log:\n%s", Timeout, what, p.name, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AwaitListening waits, as Await does, until the process itself listens
// on addr (an IPv4 host:port): a port that answers may be another
// process's, and the process may not have ended yet when it answers.
func (p *Proc) AwaitListening(addr string) error {
	var err error
	if werr := p.Await(p.name+" listens on "+addr, func() bool {
		var ok bool
		ok, err = listensOn(p.cmd.Process.Pid, addr)
		return ok || err != nil
	}); werr != nil {
		return werr
	}
	return err
}

// listensOn tells whether process pid has a socket listening on addr,
// from Linux's /proc: a listening socket of /proc/net/tcp on addr whose
// inode is one of the process's descriptors.
func listensOn(pid int, addr string) (bool, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return false, fmt.Errorf("listening on %q: not an IPv4 host:port", addr)
	}
	ip := ap.Addr().As4()
	local := fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip[:]), ap.Port())
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false, fmt.Errorf("listening on %s: %w", addr, err)
	}
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		const listen = "0A"
		if len(f) > 9 && f[1] == local && f[3] == listen {
			inodes["socket:["+f[9]+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return false, nil
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false, nil // the process has ended; Await says so
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && inodes[target] {
			return true, nil
		}
	}
	return false, nil
}

// Stop sends sig, and SIGKILL when the process has not ended within
// Timeout; it returns when the process has ended.
func (p *Proc) Stop(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(Timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// startAttempts bounds FirstStart's attempts.
const startAttempts = 3

// FirstStart calls start, which starts something on ports chosen free
// (FreeAddr) anew on every call, until it succeeds. A port chosen free is
// bound only by what starts there, so another process (make test runs
// every package at once) may take it in between: while start's error
// says so (the process ended while starting: ErrExited; an in-process
// listener: syscall.EADDRINUSE), it is called again, at most
// startAttempts times in all. Otherwise, or then, the test fails with
// the error. A restart must keep its ports (clients know them) and is
// not retried.
func FirstStart(t testing.TB, what string, start func() error) {
	t.Helper()
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err = start(); err == nil {
			return
		}
		if !errors.Is(err, ErrExited) && !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		t.Logf("%s, start %d of %d: %v", what, attempt, startAttempts, err)
	}
	t.Fatalf("%s did not start: %v", what, err)
}
