package testenv

import (
	"net"
	"sync"
	"testing"
)

// TestNATSClusterStartsOnATakenPort: a port chosen free may be taken by
// another process before the server binds it. Under make test's load a
// server died so on its route port after its client port had answered,
// and the other two, on their first start, never elected a meta leader
// (CI: TestClusterModifyConcurrent, "nats-server n1 healthy" timed out).
// The cluster must start all the same, on other ports.
func TestNATSClusterStartsOnATakenPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	go func() { // answer like a listener that is not a nats-server
		for {
			conn, err := taken.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	var mu sync.Mutex
	calls := 0
	freeAddr := func(t testing.TB) string {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 { // the first server's route port
			return taken.Addr().String()
		}
		return FreeAddr(t)
	}
	c := startNATSCluster(t, 3, NATSOptions{}, freeAddr)
	for i := range 3 {
		if c.nodes[i].cluster == taken.Addr().String() {
			t.Fatalf("server %s listens for routes on the taken port %s", c.Name(i), taken.Addr())
		}
	}
	if c.MetaLeader(t, 0) == "" {
		t.Fatal("the cluster has no meta leader")
	}
}
