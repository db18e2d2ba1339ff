package inventory

import (
	"encoding/json"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func at(sec int) time.Time { return time.Unix(int64(1_800_000_000+sec), 0).UTC() }

func birthAt(session uint64, sec int) mqttclient.Received {
	return mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "acme", Gateway: "gw-1"},
		Message: &fleetv1.Birth{Session: session, Timestamp: timestamppb.New(at(sec))}, At: at(sec)}
}

func deathAt(session uint64, sec int) mqttclient.Received {
	return mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: "gw-1"},
		Message: &fleetv1.Death{Session: session, Reason: fleetv1.Death_CONNECTION_LOST}, At: at(sec)}
}

func TestSessions(t *testing.T) {
	lost := "connection_lost"
	tests := []struct {
		name string
		msgs []mqttclient.Received
		want []Session
	}{
		{"one, lasting", []mqttclient.Received{birthAt(1, 0)}, []Session{{Session: 1, ConnectedAt: at(0)}}},
		{"ended, then another", []mqttclient.Received{birthAt(1, 0), deathAt(1, 10), birthAt(2, 20)},
			[]Session{{Session: 2, ConnectedAt: at(20)}, {Session: 1, ConnectedAt: at(0), DisconnectedAt: at(10), DeathReason: lost}}},
		{"a late Will of the older session", []mqttclient.Received{birthAt(1, 0), birthAt(2, 20), deathAt(1, 25)},
			[]Session{{Session: 2, ConnectedAt: at(20)}, {Session: 1, ConnectedAt: at(0), DisconnectedAt: at(25), DeathReason: lost}}},
		{"a birth again (rebirth, retained)", []mqttclient.Received{birthAt(1, 0), birthAt(1, 30)}, []Session{{Session: 1, ConnectedAt: at(0)}}},
		{"a death of an unseen session", []mqttclient.Received{birthAt(1, 0), deathAt(3, 40)},
			[]Session{{Session: 3, DisconnectedAt: at(40), DeathReason: lost}, {Session: 1, ConnectedAt: at(0)}}},
		{"a death twice", []mqttclient.Received{birthAt(1, 0), deathAt(1, 10), deathAt(1, 50)},
			[]Session{{Session: 1, ConnectedAt: at(0), DisconnectedAt: at(10), DeathReason: lost}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := New(Config{})
			for _, m := range tt.msgs {
				inv.Apply(m)
			}
			g, _ := inv.Get("acme", "gw-1")
			if diff := cmp.Diff(tt.want, g.Sessions); diff != "" {
				t.Errorf("sessions (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSessionsKeptAndStored: the latest MaxSessions are kept, stored and
// restored.
func TestSessionsKeptAndStored(t *testing.T) {
	inv := New(Config{})
	for s := range 15 {
		inv.Apply(birthAt(uint64(s+1), 100*s))
		inv.Apply(deathAt(uint64(s+1), 100*s+50))
	}
	g := inv.gateways[state.Key("acme", "gw-1")]
	if len(g.sessions) != MaxSessions || cap(g.sessions) != MaxSessions {
		t.Fatalf("len %d cap %d, want %d", len(g.sessions), cap(g.sessions), MaxSessions)
	}
	want := g.sessionList()
	if want[0].Session != 15 || want[MaxSessions-1].Session != 6 {
		t.Errorf("kept %d…%d, want 15…6", want[0].Session, want[MaxSessions-1].Session)
	}
	raw, err := json.Marshal(g.stored())
	if err != nil {
		t.Fatal(err)
	}
	var s state.Gateway
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, restore(&s).sessionList()); diff != "" {
		t.Errorf("restored (-want +got):\n%s", diff)
	}
}

func metricsAt(sec int, load float64, running uint32) mqttclient.Received {
	return mqttclient.Received{Topic: topic.Topic{Kind: topic.Metrics, Tenant: "acme", Gateway: "gw-1"},
		Message: &fleetv1.Metrics{Load1: load, MemoryTotalBytes: 1000, MemoryAvailableBytes: 250, DiskTotalBytes: 200, DiskFreeBytes: 150, RunningCount: running}, At: at(sec)}
}

func TestMetrics(t *testing.T) {
	tests := []struct {
		name    string
		every   int // seconds between heartbeats
		count   int
		readAt  int // seconds after the first heartbeat
		wantN   int
		wantOld int // seconds of the oldest sample returned, from the first heartbeat
	}{
		{"one a minute of two", 30, 4, 100, 2, 0},
		{"an hour's worth", 30, 300, 300 * 30, 60, 90 * 60},
		{"older than an hour are not shown", 60, 10, 3600 + 5*60, 5, 5 * 60},
		{"none after an hour of silence", 60, 10, 3 * 3600, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := at(tt.readAt)
			inv := New(Config{Now: func() time.Time { return now }})
			inv.Apply(birthAt(1, 0))
			for i := range tt.count {
				inv.Apply(metricsAt(i*tt.every, 0.5, uint32(i)))
			}
			got, _, ok := inv.Metrics("acme", "gw-1")
			if !ok || len(got) != tt.wantN {
				t.Fatalf("got %d samples (%v), want %d", len(got), ok, tt.wantN)
			}
			if tt.wantN == 0 {
				return
			}
			if !got[0].At.Equal(at(tt.wantOld)) {
				t.Errorf("oldest at %v, want %v", got[0].At, at(tt.wantOld))
			}
			for i := 1; i < len(got); i++ {
				if !got[i].At.After(got[i-1].At) {
					t.Fatalf("sample %d at %v, not after %v", i, got[i].At, got[i-1].At)
				}
			}
			if s := got[0]; s.Load1 != 0.5 || s.MemoryUsedPercent != 75 || s.DiskUsedPercent != 25 {
				t.Errorf("sample %+v, want load 0.5, memory 75 %%, disk 25 %%", s)
			}
		})
	}
	if _, _, ok := New(Config{}).Metrics("acme", "nope"); ok {
		t.Error("metrics of an unknown gateway")
	}
}

// TestMetricsAfterAGap: a gap of more than an hour starts the ring again,
// so that minutes never alias (they keep 16 bits).
func TestMetricsAfterAGap(t *testing.T) {
	var r metricRing
	for i := range 30 {
		r.add(&fleetv1.Metrics{RunningCount: 1}, at(i*60))
	}
	late := 65536*60 + 10*60 // 2^16 minutes later: the same low 16 bits
	r.add(&fleetv1.Metrics{RunningCount: 2}, at(late))
	got := r.samples(at(late))
	if len(got) != 1 || got[0].Running != 2 {
		t.Errorf("got %+v, want only the late sample", got)
	}
}

// TestMetricRingSize pins the memory the report gives per gateway.
func TestMetricRingSize(t *testing.T) {
	if got := unsafe.Sizeof(metricRing{}); got != 608 {
		t.Errorf("metricRing is %d bytes, want 608 (update the estimate in the docs)", got)
	}
	if got := unsafe.Sizeof(session{}); got != 40 {
		t.Errorf("session is %d bytes, want 40", got)
	}
}
