package broker

import (
	"path/filepath"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/system"
)

// TestStoreStopsUnderTheEventLoop: mochi's Close stops the store without
// waiting for its event loop, which may be storing the $SYS counters or
// expiring retained messages at that moment. (Before: a data race on the
// database, found in TestSecuritySignedCommands and
// TestRolloutPrefetchTwoReplicas under -race, and a nil database
// dereference without it.)
func TestStoreStopsUnderTheEventLoop(t *testing.T) {
	for i := range 20 {
		srv := mqtt.New(nil)
		store, err := addStore(srv, filepath.Join(t.TempDir(), "broker.db"))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		started := make(chan struct{})
		wg.Go(func() {
			close(started)
			for range 200 {
				store.OnSysInfoTick(&system.Info{Uptime: int64(i)})
				store.OnRetainedExpired("fleet/v1/x")
			}
		})
		<-started
		if err := store.Stop(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}
