package testenv

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// takenAddr is a loopback port held, until the test's end, by a listener
// that answers like one that is not the process a test starts.
func takenAddr(t *testing.T) string {
	t.Helper()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	go func() {
		for {
			conn, err := taken.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	return taken.Addr().String()
}

func plainMosquittoConf(port string) string {
	return "listener " + port + " 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n"
}

// TestMosquittoStartsOnATakenPort: a port chosen free may be taken by
// another process before mosquitto binds it; mosquitto then ends, and
// the other process's answer is no sign that mosquitto listens. It must
// start all the same, on another port.
func TestMosquittoStartsOnATakenPort(t *testing.T) {
	bin := mosquittoBinary(t)
	taken := takenAddr(t)
	calls := 0
	freeAddr := func(t testing.TB) string {
		calls++
		if calls == 1 {
			return taken
		}
		return FreeAddr(t)
	}
	m := startMosquitto(t, bin, t.TempDir(), plainMosquittoConf, freeAddr)
	if m.addr == taken {
		t.Fatalf("mosquitto's address is the taken %s", taken)
	}
	if m.PID() == 0 || m.proc.Exited() {
		t.Fatalf("mosquitto is not running:\n%s", m.logs.String())
	}
}

// TestMosquittoRestartOnATakenPort: a restart keeps its port, which the
// clients know. When another process took it meanwhile, the restart
// fails at once with mosquitto's log, not after a wait nor with a
// mosquitto that has ended.
func TestMosquittoRestartOnATakenPort(t *testing.T) {
	m := startMosquitto(t, mosquittoBinary(t), t.TempDir(), plainMosquittoConf, FreeAddr)
	m.mu.Lock()
	m.stop()
	m.mu.Unlock()
	ln, err := net.Listen("tcp", m.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	begin := time.Now()
	err = m.restart()
	if !errors.Is(err, ErrExited) {
		t.Fatalf("restart on the taken %s: %v, want ErrExited", m.addr, err)
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Errorf("restart's error has not mosquitto's log (address in use): %v", err)
	}
	if d := time.Since(begin); d > Timeout/2 {
		t.Errorf("restart failed after %v, want at once", d)
	}
}
