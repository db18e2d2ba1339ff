// Package mqttclienttest records what gateways publish, for tests: a console
// that keeps every publication and waits for the ones a test expects.
package mqttclienttest

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Recorder is a console that keeps everything it receives.
type Recorder struct {
	*mqttclient.Console
	mu   sync.Mutex
	msgs []mqttclient.Received
}

// NewRecorder connects a console to brokerURL that records every
// publication, and closes it at cleanup.
func NewRecorder(t testing.TB, brokerURL string, enc codec.Encoding) *Recorder {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	r := &Recorder{}
	c, err := mqttclient.Dial(ctx, mqttclient.Config{BrokerURL: u, Scheme: topic.Default(), Encoding: enc, Watch: func(m mqttclient.Received) {
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.Console = c
	t.Cleanup(func() { c.Close() })
	return r
}

// All returns the recorded publications that match pred.
func (r *Recorder) All(pred func(mqttclient.Received) bool) []mqttclient.Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []mqttclient.Received
	for _, m := range r.msgs {
		if pred(m) {
			out = append(out, m)
		}
	}
	return out
}

// Await waits for the n-th publication matching pred and returns it.
func (r *Recorder) Await(t testing.TB, what string, n int, pred func(mqttclient.Received) bool) mqttclient.Received {
	t.Helper()
	var got []mqttclient.Received
	testenv.Eventually(t, fmt.Sprintf("%d× %s", n, what), func() bool {
		got = r.All(pred)
		return len(got) >= n
	})
	return got[n-1]
}

// Kind matches publications of one kind from one gateway.
func Kind(k topic.Kind, gateway string) func(mqttclient.Received) bool {
	return func(m mqttclient.Received) bool { return m.Topic.Kind == k && m.Topic.Gateway == gateway }
}
