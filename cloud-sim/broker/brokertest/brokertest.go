// Package brokertest starts the embedded broker for tests, persistent and
// restartable like testenv's Mosquitto, so a test can run against both.
package brokertest

import (
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// Brokers returns the embedded broker and a Mosquitto broker, both
// persistent, for tests that must pass against both.
func Brokers(t testing.TB) []func(testing.TB) testenv.Broker {
	return []func(testing.TB) testenv.Broker{
		func(t testing.TB) testenv.Broker { return Embedded(t) },
		func(t testing.TB) testenv.Broker { return testenv.Mosquitto(t) },
	}
}

type embedded struct {
	mu    sync.Mutex
	b     *broker.Broker
	addr  string
	store string
	log   *slog.Logger
	name  string
}

// Embedded starts the embedded broker with persistence.
func Embedded(t testing.TB) testenv.Broker {
	t.Helper()
	logs := &testenv.LogBuffer{}
	e := &embedded{store: filepath.Join(t.TempDir(), "broker.db"),
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	b, err := broker.Start(broker.Config{StorePath: e.store, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	e.b, e.addr = b, b.Addr()
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.b.Close()
		if t.Failed() {
			t.Logf("embedded broker log:\n%s", logs.String())
		}
	})
	return e
}

// EmbeddedInMemory starts the embedded broker without persistence: a
// restart loses sessions. It is for measuring what persistence costs.
func EmbeddedInMemory(t testing.TB) testenv.Broker {
	t.Helper()
	b, err := broker.Start(broker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &embedded{b: b, addr: b.Addr(), name: "embedded-in-memory"}
}

func (e *embedded) Name() string {
	if e.name != "" {
		return e.name
	}
	return "embedded"
}
func (e *embedded) URL() string { return "mqtt://" + e.addr }

func (e *embedded) Restart(t testing.TB) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.b.Close(); err != nil {
		t.Fatalf("close broker: %v", err)
	}
	var err error
	deadline := time.Now().Add(testenv.Timeout)
	for {
		// The port may linger for a moment after close.
		e.b, err = broker.Start(broker.Config{Addr: e.addr, StorePath: e.store, Logger: e.log})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart broker: %v", err)
	}
}
