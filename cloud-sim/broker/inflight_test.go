package broker

import (
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestInflightNextImmediateWithWriters: mochi calls NextImmediate on a
// client's in-flight messages for every packet that client sends, once
// the client has a send quota (its CONNECT carried a Receive Maximum),
// while publishes to it Set new ones. In mochi v2.7.9 NextImmediate took
// the read lock twice (itself, then GetAll): a Set waiting for the write
// lock between the two blocked both for good, and with them the
// publisher's connection (third_party/mochi-mqtt-server/PATCHES.md).
// The two run against each other until the deadline; a deadlock shows
// as a round that does not end.
func TestInflightNextImmediateWithWriters(t *testing.T) {
	in := mqtt.NewInflights()
	deadline := time.Now().Add(2 * time.Second)
	for round := 0; time.Now().Before(deadline); round++ {
		var wg sync.WaitGroup
		wg.Go(func() {
			for id := range uint16(200) {
				in.Set(packets.Packet{PacketID: id + 1, Expiry: -1})
				in.Delete(id + 1)
			}
		})
		wg.Go(func() {
			for range 200 {
				in.NextImmediate()
			}
		})
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: NextImmediate and Set deadlocked on the in-flight messages' lock", round)
		}
	}
}
