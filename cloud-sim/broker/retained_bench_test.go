package broker

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// BenchmarkRetainedQoS1 measures retained QoS 1 publishes through a broker
// with a store, each publisher waiting for its PUBACK before the next (as
// a gateway publishing its statuses does), 100 topics a publisher. It uses
// only Start's API, so that the same file measures an older broker
// (docs/benchmarks.md, issue 15).
func BenchmarkRetainedQoS1(b *testing.B) {
	for _, publishers := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) {
			br, err := Start(Config{StorePath: filepath.Join(b.TempDir(), "broker.db")})
			if err != nil {
				b.Fatal(err)
			}
			defer br.Close()
			clients := make([]*paho.Client, publishers)
			for p := range clients {
				clients[p] = benchClient(b, br.Addr(), fmt.Sprintf("bench-%d", p))
			}
			payload := make([]byte, 200) // about a status message
			var sent atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for p, c := range clients {
				wg.Go(func() {
					for i := 0; sent.Add(1) <= int64(b.N); i++ {
						pk := &paho.Publish{Topic: fmt.Sprintf("bench/%d/%d", p, i%100), QoS: 1, Retain: true, Payload: payload}
						if resp, err := c.Publish(context.Background(), pk); err != nil || resp.ReasonCode >= 0x80 {
							b.Errorf("publish: %v %v", resp, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func benchClient(b *testing.B, addr, id string) *paho.Client {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}
