package packets

// Fleet Agent's tests of its patch to ReadPacket (see PATCHES.md at the
// module's root): packets read back as written, with the allocations the
// patch removed kept out.

import (
	"bytes"
	"reflect"
	"testing"
)

// fleetPublish is a status as a gateway publishes it: a topic, a content
// type and a small protobuf payload.
func fleetPublish(payload int) *ControlPacket {
	cp := NewControlPacket(PUBLISH)
	p := cp.Content.(*Publish)
	p.QoS, p.Retain, p.PacketID = 1, true, 7
	p.Topic = "fleet/v1/bench/gw-1234/status/web"
	p.Properties = &Properties{ContentType: "application/x-protobuf"}
	p.Payload = bytes.Repeat([]byte{0xa5}, payload)
	return cp
}

func TestReadPacketRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		cp   *ControlPacket
	}{
		{"publish", fleetPublish(60)},
		{"publish, empty payload", fleetPublish(0)},
		{"publish, 64 KiB payload", fleetPublish(64 << 10)},
		{"puback", &ControlPacket{FixedHeader: FixedHeader{Type: PUBACK}, Content: &Puback{PacketID: 9, ReasonCode: 0x10, Properties: &Properties{ReasonString: "no matching subscribers"}}}},
		{"subscribe", &ControlPacket{FixedHeader: FixedHeader{Type: SUBSCRIBE, Flags: 2}, Content: &Subscribe{PacketID: 3, Properties: &Properties{},
			Subscriptions: []SubOptions{{Topic: "$share/controllers/fleet/v1/+/+/status/+", QoS: 1}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var wire bytes.Buffer
			if _, err := tc.cp.WriteTo(&wire); err != nil {
				t.Fatal(err)
			}
			got, err := ReadPacket(&wire)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.cp.Content
			if p, ok := want.(*Publish); ok && len(p.Payload) == 0 {
				p.Payload = []byte{} // read back as empty, not nil
			}
			if !reflect.DeepEqual(got.Content, want) {
				t.Errorf("read back %+v, wrote %+v", got.Content, want)
			}
		})
	}
}

// TestReadPacketShort: a packet cut short, in its body or inside a
// string, is an error and never a packet.
func TestReadPacketShort(t *testing.T) {
	var wire bytes.Buffer
	if _, err := fleetPublish(60).WriteTo(&wire); err != nil {
		t.Fatal(err)
	}
	whole := wire.Bytes()
	for _, n := range []int{1, 2, 3, 10, len(whole) - 1} {
		if _, err := ReadPacket(bytes.NewReader(whole[:n])); err == nil {
			t.Errorf("the first %d bytes of %d read as a packet", n, len(whole))
		}
	}
	// The body's length says 5 bytes, its topic's 40.
	body := []byte{0x30, 5, 0, 40, 'a', 'b', 'c'}
	if _, err := ReadPacket(bytes.NewReader(body)); err == nil {
		t.Error("a topic longer than its packet read as a packet")
	}
}

// TestReadPacketAllocations bounds what reading a status costs: the
// packet's body once at its size, its strings and payload each once at
// theirs, and the structures. Unpatched, ReadPacket took 29 allocations
// and 6,355 bytes here (11 and 731 patched), growing a bytes.Buffer past
// 512 bytes for the body and for each string.
func TestReadPacketAllocations(t *testing.T) {
	var wire bytes.Buffer
	if _, err := fleetPublish(60).WriteTo(&wire); err != nil {
		t.Fatal(err)
	}
	whole := wire.Bytes()
	r := bytes.NewReader(whole)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(whole)
		if _, err := ReadPacket(r); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 11 {
		t.Errorf("ReadPacket took %.0f allocations a status, want at most 11", allocs)
	}
}

func BenchmarkReadPacket(b *testing.B) {
	var wire bytes.Buffer
	if _, err := fleetPublish(60).WriteTo(&wire); err != nil {
		b.Fatal(err)
	}
	whole := wire.Bytes()
	r := bytes.NewReader(whole)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(whole)
		if _, err := ReadPacket(r); err != nil {
			b.Fatal(err)
		}
	}
}
