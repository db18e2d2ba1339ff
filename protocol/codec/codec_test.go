package codec_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/google/go-cmp/cmp"
)

func sampleCommands() []*fleetv1.Command {
	ts := timestamppb.New(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	return []*fleetv1.Command{
		{Id: "c1", IssuedAt: ts, Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}},
		{Id: "c2", IssuedAt: ts, ExpiresAt: ts, Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{
			Name: "web", Revision: 3, Image: "registry.example/web:1.2", PullPolicy: fleetv1.Pull_ALWAYS,
			Env:   map[string]string{"A": "1"},
			Ports: []*fleetv1.Port{{ContainerPort: 80, HostPort: 8080}},
		}}}},
		{Id: "c3", Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: []byte{1, 2, 3}}}},
		{Id: "c4", Body: &fleetv1.Command_Stop{Stop: &fleetv1.DeploymentRef{Name: "web"}}},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, enc := range []codec.Encoding{codec.Protobuf, codec.JSON} {
		for _, want := range sampleCommands() {
			t.Run(enc.String()+"/"+want.GetId(), func(t *testing.T) {
				b, err := codec.Marshal(enc, want)
				if err != nil {
					t.Fatal(err)
				}
				got := new(fleetv1.Command)
				if err := codec.Unmarshal(enc, b, got); err != nil {
					t.Fatalf("Unmarshal(%s): %v", b, err)
				}
				if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
					t.Errorf("round trip (-want +got):\n%s", d)
				}
				if id := codec.PeekCommandID(enc, b); id != want.GetId() {
					t.Errorf("PeekCommandID = %q, want %q", id, want.GetId())
				}
			})
		}
	}
}

// The JSON names and enum strings are part of the public contract.
func TestJSONContract(t *testing.T) {
	r := &fleetv1.Reply{CommandId: "x", Result: fleetv1.Reply_SUCCEEDED}
	b, err := codec.Marshal(codec.JSON, r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"commandId":"x"`, `"result":"SUCCEEDED"`, `"code":"OK"`} {
		if !strings.Contains(strings.ReplaceAll(string(b), " ", ""), want) {
			t.Errorf("reply JSON %s lacks %s", b, want)
		}
	}
	in := `{"id":"a","setCredentials":{"credentials":[{"registry":"r","basic":{"username":"u","password":"p"}}]}}`
	c := new(fleetv1.Command)
	if err := codec.Unmarshal(codec.JSON, []byte(in), c); err != nil {
		t.Fatal(err)
	}
	if got := c.GetSetCredentials().GetCredentials()[0].GetBasic().GetUsername(); got != "u" {
		t.Errorf("username = %q, want u", got)
	}
}

func TestStrict(t *testing.T) {
	unknownNested := protowire.AppendTag(nil, 1, protowire.BytesType)
	unknownNested = protowire.AppendString(unknownNested, "id1")
	spec := protowire.AppendTag(nil, 99, protowire.VarintType)
	spec = protowire.AppendVarint(spec, 7)
	deploy := protowire.AppendTag(nil, 1, protowire.BytesType)
	deploy = protowire.AppendBytes(deploy, spec)
	unknownNested = protowire.AppendTag(unknownNested, 10, protowire.BytesType)
	unknownNested = protowire.AppendBytes(unknownNested, deploy)

	// The second of two credentials of a set-credentials carries field 98.
	num := func(m proto.Message, field string) protowire.Number {
		return m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(field)).Number()
	}
	var set []byte
	for i, user := range []string{"a", "b"} {
		cred, err := proto.Marshal(&fleetv1.Credential{Registry: "r", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: user}}})
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			cred = protowire.AppendVarint(protowire.AppendTag(cred, 98, protowire.VarintType), 1)
		}
		set = protowire.AppendBytes(protowire.AppendTag(set, num(&fleetv1.SetCredentials{}, "credentials"), protowire.BytesType), cred)
	}
	unknownInList := protowire.AppendBytes(protowire.AppendTag(nil, num(&fleetv1.Command{}, "set_credentials"), protowire.BytesType), set)
	unknownTop := protowire.AppendVarint(protowire.AppendTag(nil, 97, protowire.VarintType), 1)

	tests := []struct {
		name    string
		enc     codec.Encoding
		in      []byte
		wantSub string
	}{
		{"proto unknown top", codec.Protobuf, unknownTop, "field number 97 in fleet.v1.Command"},
		{"proto unknown in a list", codec.Protobuf, unknownInList, "field number 98 in setCredentials.credentials[1] (fleet.v1.Credential)"},
		{"json unknown top", codec.JSON, []byte(`{"id":"a","rebirth":{},"colour":"red"}`), "colour"},
		{"json unknown nested", codec.JSON, []byte(`{"id":"a","deploy":{"spec":{"name":"w","imagee":"x"}}}`), "imagee"},
		{"proto unknown nested", codec.Protobuf, unknownNested, "field number 99 in deploy.spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := codec.Unmarshal(tt.enc, tt.in, new(fleetv1.Command))
			if !errors.Is(err, codec.ErrUnknownField) {
				t.Fatalf("err = %v, want ErrUnknownField", err)
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("err = %q, want it to name %q", err, tt.wantSub)
			}
		})
	}
}

func TestFromContentType(t *testing.T) {
	tests := []struct {
		ct   string
		want codec.Encoding
	}{
		{"application/json", codec.JSON},
		{"application/json; charset=utf-8", codec.JSON},
		{"application/x-protobuf", codec.Protobuf},
		{"", codec.Protobuf},
		{"text/plain", codec.Protobuf},
		{"Application/JSON", codec.JSON},
	}
	for _, tt := range tests {
		if got := codec.FromContentType(tt.ct); got != tt.want {
			t.Errorf("FromContentType(%q) = %v, want %v", tt.ct, got, tt.want)
		}
	}
	// The controller asks for every publication it receives.
	if n := testing.AllocsPerRun(100, func() { codec.FromContentType(codec.ContentTypeProtobuf) }); n != 0 {
		t.Errorf("FromContentType(%q) took %.0f allocations, want none", codec.ContentTypeProtobuf, n)
	}
}

func FuzzDecodeCommandJSON(f *testing.F) {
	for _, c := range sampleCommands() {
		b, _ := codec.Marshal(codec.JSON, c)
		f.Add(b)
	}
	f.Add([]byte(`{"id":`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzDecode(t, codec.JSON, b)
	})
}

func FuzzDecodeCommandProtobuf(f *testing.F) {
	for _, c := range sampleCommands() {
		b, _ := codec.Marshal(codec.Protobuf, c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzDecode(t, codec.Protobuf, b)
	})
}

// fuzzDecode checks that decoding never panics and that whatever decodes
// re-encodes and decodes to the same message.
func fuzzDecode(t *testing.T, enc codec.Encoding, b []byte) {
	_ = codec.PeekCommandID(enc, b)
	c := new(fleetv1.Command)
	if err := codec.Unmarshal(enc, b, c); err != nil {
		return
	}
	out, err := codec.Marshal(enc, c)
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	again := new(fleetv1.Command)
	if err := codec.Unmarshal(enc, out, again); err != nil {
		t.Fatalf("decode of re-encoded %q: %v", out, err)
	}
	if !proto.Equal(c, again) {
		t.Fatalf("not stable: %v != %v", c, again)
	}
}

// BenchmarkUnmarshalStatus: what decoding a deployment status costs a
// controller (every status it ingests), strict check included.
func BenchmarkUnmarshalStatus(b *testing.B) {
	st := &fleetv1.DeploymentStatus{Name: "shop", Revision: 4, Phase: fleetv1.DeploymentStatus_RUNNING, Image: "registry.example.com/team/web:4",
		UpdatedAt: timestamppb.Now(), PullProgress: &fleetv1.PullProgress{BytesDone: 1 << 20, BytesTotal: 4 << 20},
		Services: []*fleetv1.ServiceStatus{{Name: "web", Image: "r/web:4"}, {Name: "db", Image: "r/db:16"}}}
	raw, err := proto.Marshal(st)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := codec.Unmarshal(codec.Protobuf, raw, new(fleetv1.DeploymentStatus)); err != nil {
			b.Fatal(err)
		}
	}
}
