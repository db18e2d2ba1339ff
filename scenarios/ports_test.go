package scenarios

import (
	"net"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
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

// TestCloudStartsOnATakenPort: the MQTT port chosen free for the cloud
// helper's embedded broker may be taken by another process (make test
// runs every package at once) before serve binds it. The cloud must
// start all the same, on another port, and its restart keep that one.
func TestCloudStartsOnATakenPort(t *testing.T) {
	taken := takenAddr(t)
	c := &cloud{dataDir: t.TempDir(), mqtt: taken}
	c.cfg = serve.Config{DataDir: c.dataDir, MQTTListen: c.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), StaleAfter: time.Minute}
	c.start(t)
	t.Cleanup(func() {
		if c.Server != nil {
			c.Close()
		}
	})
	if c.mqtt == taken || c.BrokerURL.Host != c.mqtt {
		t.Fatalf("broker at %s, c.mqtt %s; the taken port is %s", c.BrokerURL.Host, c.mqtt, taken)
	}
	c.restart(t)
	if c.BrokerURL.Host != c.mqtt {
		t.Fatalf("restarted broker at %s, want %s", c.BrokerURL.Host, c.mqtt)
	}
}

// TestReplicaStartsOnATakenPort: the API port chosen free for a
// cloud-sim serve process may be taken before it binds it; it then ends,
// while the other process answers on the port. It must start all the
// same, on another port, not time out.
func TestReplicaStartsOnATakenPort(t *testing.T) {
	bin := testenv.Binary(t, "cloud-sim")
	taken := takenAddr(t)
	calls := 0
	freeAddr := func(t testing.TB) string {
		calls++
		if calls == 1 {
			return taken
		}
		return testenv.FreeAddr(t)
	}
	r := startReplicaOn(t, freeAddr, bin, "r1", "ports-token", "--mqtt-listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0")
	if r.api.Base == "http://"+taken {
		t.Fatalf("replica's API on the taken %s", taken)
	}
	if _, err := r.replica(); err != nil {
		t.Fatalf("replica: %v", err)
	}
}
