package state

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// fullGateway is a gateway record with every field set, to the last
// field of its last part (TestFullGatewayIsFull keeps it so).
func fullGateway() *Gateway {
	at := func(s int) time.Time { return time.Date(2026, 12, 2, 7, 0, s, 123456789, time.UTC) }
	return &Gateway{Tenant: "acme", ID: "gw-1", Online: true, Session: 7, DeathSession: 6, DeathReason: "CONNECTION_LOST",
		ConnectedAt: at(1), LastSeen: at(2), AgentVersion: "1.2.3", ProtocolVersion: 1, Simulated: true,
		Host:           &Host{Hostname: "h", OS: "linux", Arch: "arm64", CPUs: 4, MemoryBytes: 4 << 30},
		Engine:         &Engine{Name: "docker", Version: "28.2.2", Reachable: true, Error: "slow"},
		ReportedLabels: map[string]string{"site": "north"}, ReportedGroups: []string{"all"}, Capabilities: []string{"deploy"},
		PublicKey: "a2V5", Delivered: []string{"quay.io"}, Running: 2,
		Deployments: map[string]*Deployment{"web": {Name: "web", Revision: 4, Phase: "RUNNING", Health: "healthy", Image: "quay.io/acme/web:4",
			Digest: "sha256:00", ContainerID: "c0ffee", Code: "PULL_FAILED", Message: "retrying", RestartCount: 3, UpdatedAt: at(3), ReportedAt: at(4),
			Services: []Service{{Name: "api", Phase: "RUNNING", Health: "healthy", Image: "quay.io/acme/api:4", Digest: "sha256:01",
				ContainerID: "beef", RestartCount: 1, ExitCode: 137, OOMKilled: true, Code: "EXITED", Message: "killed"}}}},
		Registries: []Registry{{Registry: "quay.io", Kind: "basic", Username: "robot", Fingerprint: "ab12", ExpiresAt: at(5), Warning: "expires soon"}},
		Refused:    []Refusal{{Limit: "deployments", Message: "too many", Count: 2, First: at(6), Last: at(7)}},
		Sessions:   []Session{{Session: 6, ConnectedAt: at(8), DisconnectedAt: at(9), DeathReason: "CONNECTION_LOST"}},
	}
}

// TestFullGatewayIsFull fails when a field is added to the gateway record
// (or one of its parts) and fullGateway does not set it: the round trips
// below would not see it lost.
func TestFullGatewayIsFull(t *testing.T) {
	var walk func(v reflect.Value, path string)
	walk = func(v reflect.Value, path string) {
		if v.IsZero() {
			t.Errorf("fullGateway leaves %s unset", path)
			return
		}
		switch v.Kind() {
		case reflect.Pointer:
			walk(v.Elem(), path)
		case reflect.Struct:
			if v.Type() == reflect.TypeFor[time.Time]() {
				return
			}
			for i := range v.NumField() {
				walk(v.Field(i), path+"."+v.Type().Field(i).Name)
			}
		case reflect.Slice:
			for i := range v.Len() {
				walk(v.Index(i), path+"[]")
			}
		case reflect.Map:
			for it := v.MapRange(); it.Next(); {
				walk(it.Value(), path+"[]")
			}
		}
	}
	walk(reflect.ValueOf(fullGateway()), "Gateway")
}

func TestGatewayRecord(t *testing.T) {
	legacy, err := json.Marshal(fullGateway())
	if err != nil {
		t.Fatal(err)
	}
	current, err := fullGateway().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want *Gateway
	}{
		{"protobuf, every field", current, fullGateway()},
		{"JSON, as versions before protobuf wrote it", legacy, fullGateway()},
		{"protobuf, nothing set", mustEncode(t, &Gateway{}), &Gateway{}},
		{"JSON, nothing set", []byte(`{"tenant":"","id":"","online":false,"session":0,"running":0}`), &Gateway{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Decoded over a record already holding fields: none is kept.
			got := fullGateway()
			if err := Decode(tc.data, got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decoded\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
	if len(current) >= len(legacy) {
		t.Errorf("protobuf record of %d bytes, JSON's %d", len(current), len(legacy))
	}
}

func TestGatewayRecordRefusesGarbage(t *testing.T) {
	for _, data := range [][]byte{{0x0a, 0x40, 'a'}, []byte(`{"tenant":`), {0xff, 0xff}} {
		var g Gateway
		if err := Decode(data, &g); err == nil {
			t.Errorf("%q decoded as %+v", data, g)
		}
	}
}

// TestGatewayRecordStored: what the store keeps for a gateway is protobuf,
// and a JSON record already there reads back the same.
func TestGatewayRecordStored(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, Config{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	revs, conflicts, err := st.PutIfMany(ctx, Gateways, map[string]Versioned{"acme.gw-1": {Value: fullGateway()}})
	if err != nil || len(conflicts) > 0 || revs["acme.gw-1"] == 0 {
		t.Fatalf("PutIfMany: %v, %v, %v", revs, conflicts, err)
	}
	legacy, _ := json.Marshal(fullGateway())
	if _, err := st.kvs[Gateways].Put(ctx, "acme.gw-2", legacy); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"acme.gw-1", "acme.gw-2"} {
		e, err := st.GetEntry(ctx, Gateways, key)
		if err != nil {
			t.Fatal(err)
		}
		if key == "acme.gw-1" && e.Value[0] == '{' {
			t.Errorf("%s stored as JSON: %s", key, e.Value)
		}
		var g Gateway
		if err := st.Get(ctx, Gateways, key, &g); err != nil || !reflect.DeepEqual(&g, fullGateway()) {
			t.Errorf("%s read back as %+v (%v)", key, g, err)
		}
	}
}

func mustEncode(t *testing.T, v any) []byte {
	t.Helper()
	data, err := Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// BenchmarkGatewayRecord: a record as BenchmarkIngestCost's gateways have
// it, encoded and decoded as protobuf and as JSON.
func BenchmarkGatewayRecord(b *testing.B) {
	g := fullGateway()
	g.Refused, g.Delivered, g.DeathReason, g.DeathSession = nil, nil, "", 0
	g.Deployments["web"].Services = nil
	asJSON, _ := json.Marshal(g)
	asProto, _ := g.MarshalBinary()
	for _, c := range []struct {
		name string
		run  func() error
	}{
		{"encode/protobuf", func() error { _, err := Encode(g); return err }},
		{"encode/json", func() error { _, err := json.Marshal(g); return err }},
		{"decode/protobuf", func() error { return Decode(asProto, new(Gateway)) }},
		{"decode/json", func() error { return json.Unmarshal(asJSON, new(Gateway)) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Logf("a record: %d bytes as protobuf, %d as JSON", len(asProto), len(asJSON))
}
