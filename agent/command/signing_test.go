package command_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// The clock of the signing tests.
var signNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func verifier(t *testing.T, keys ...ed25519.PrivateKey) *cmdsig.Verifier {
	t.Helper()
	var pubs []cmdsig.PublicKey
	for _, k := range keys {
		pubs = append(pubs, cmdsig.Public(k.Public().(ed25519.PublicKey)))
	}
	v, err := cmdsig.NewVerifier(pubs)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type signEnv struct {
	proc  *command.Processor
	pub   *fakePublisher
	mu    sync.Mutex
	calls map[string]int
}

// newSignEnv is a processor that trusts v, over a journal that keeps only
// two commands by its count bound.
func newSignEnv(t *testing.T, v *cmdsig.Verifier) *signEnv {
	t.Helper()
	now := func() time.Time { return signNow }
	st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db"), MaxCommands: 2, MaxCommandAge: time.Minute, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	e := &signEnv{pub: &fakePublisher{refuse: map[string]bool{}}, calls: map[string]int{}}
	record := func(ctx context.Context, x *command.Exec) error {
		e.mu.Lock()
		e.calls[x.Command.GetId()]++
		e.mu.Unlock()
		return nil
	}
	handlers := map[topic.Verb]command.Handler{topic.Rebirth: record, topic.SetCredentials: record}
	e.proc, err = command.New(command.Config{Scheme: topic.Default(), Tenant: "t", Gateway: "g", Journal: st,
		Publisher: e.pub, Handlers: handlers, Verifier: v, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.proc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	return e
}

func (e *signEnv) called(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[id]
}

// publication is a command as the broker delivers it.
type publication struct {
	topic, contentType string
	payload            []byte
	keyID, sig         string
}

func (p publication) inbound() mqttlink.Inbound {
	in := mqttlink.Inbound{Topic: p.topic, Payload: p.payload, ContentType: p.contentType,
		ResponseTopic: topic.Default().ConsoleReply("t", "g", "c1"), CorrelationData: []byte("c")}
	if p.keyID != "" || p.sig != "" {
		in.UserProperties = map[string]string{cmdsig.PropKeyID: p.keyID, cmdsig.PropSignature: p.sig}
	}
	return in
}

// signed is cmd published on gateway gw's topic for its verb, in JSON,
// signed with key (unsigned when key is nil).
func signed(t *testing.T, key ed25519.PrivateKey, gw string, cmd *fleetv1.Command) publication {
	t.Helper()
	payload, err := codec.Marshal(codec.JSON, cmd)
	if err != nil {
		t.Fatal(err)
	}
	p := publication{topic: topic.Default().Command("t", gw, topic.VerbOf(cmd)), contentType: codec.ContentTypeJSON, payload: payload}
	if key != nil {
		if p.keyID, p.sig, err = cmdsig.Sign(key, p.topic, p.contentType, p.payload); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func issued(id string, at time.Time) *fleetv1.Command {
	c := rebirth(id)
	c.IssuedAt = timestamppb.New(at)
	return c
}

// TestSignedCommands: with keys, only commands signed by a trusted key
// over this gateway's topic, content type and exact payload, issued within
// the window, execute; every other is refused with its code and runs nothing.
func TestSignedCommands(t *testing.T) {
	trusted, other, untrusted := newKey(t), newKey(t), newKey(t)
	sealed := &fleetv1.Command{Id: "sealed", IssuedAt: timestamppb.New(signNow),
		Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: []byte("box")}}}
	tests := []struct {
		name      string
		pub       func() publication
		wantCode  fleetv1.Reply_Code // OK: executes
		wantField string
	}{
		{"signed", func() publication { return signed(t, trusted, "g", issued("ok", signNow)) }, fleetv1.Reply_OK, ""},
		{"signed by the second valid key", func() publication { return signed(t, other, "g", issued("ok2", signNow)) }, fleetv1.Reply_OK, ""},
		{"unsigned", func() publication { return signed(t, nil, "g", issued("x", signNow)) }, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"untrusted key", func() publication { return signed(t, untrusted, "g", issued("x", signNow)) }, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"key id of a trusted key, signature of another", func() publication {
			p, q := signed(t, trusted, "g", issued("x", signNow)), signed(t, untrusted, "g", issued("x", signNow))
			p.sig = q.sig
			return p
		}, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"tampered payload", func() publication {
			p := signed(t, trusted, "g", issued("x", signNow))
			p.payload = signed(t, nil, "g", issued("y", signNow)).payload
			return p
		}, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"signed for another gateway's topic", func() publication {
			p := signed(t, trusted, "h", issued("x", signNow))
			p.topic = topic.Default().Command("t", "g", topic.Rebirth)
			return p
		}, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"content type changed", func() publication {
			p := signed(t, trusted, "g", issued("x", signNow))
			p.contentType = "application/json; charset=utf-8"
			return p
		}, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"garbage signature", func() publication {
			p := signed(t, trusted, "g", issued("x", signNow))
			p.sig = "not base64!"
			return p
		}, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"issuedAt too old", func() publication {
			return signed(t, trusted, "g", issued("x", signNow.Add(-command.DefaultMaxAge-time.Second)))
		}, fleetv1.Reply_EXPIRED, "issuedAt"},
		{"issuedAt in the future", func() publication {
			return signed(t, trusted, "g", issued("x", signNow.Add(command.DefaultMaxSkew+time.Second)))
		}, fleetv1.Reply_INVALID_ARGUMENT, "issuedAt"},
		{"no issuedAt", func() publication { return signed(t, trusted, "g", rebirth("x")) }, fleetv1.Reply_INVALID_ARGUMENT, "issuedAt"},
		{"sealed credentials unsigned", func() publication { return signed(t, nil, "g", sealed) }, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"sealed credentials signed by an untrusted key", func() publication { return signed(t, untrusted, "g", sealed) }, fleetv1.Reply_UNAUTHENTICATED, "signature"},
		{"sealed credentials signed", func() publication { return signed(t, trusted, "g", sealed) }, fleetv1.Reply_OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newSignEnv(t, verifier(t, trusted, other))
			e.proc.Receive(tt.pub().inbound())
			r := lastReply(t, e.pub)
			if tt.wantCode == fleetv1.Reply_OK {
				if r.GetResult() != fleetv1.Reply_SUCCEEDED || e.called(r.GetCommandId()) != 1 {
					t.Errorf("reply = %v, calls = %v; want SUCCEEDED, run once", r, e.calls)
				}
				return
			}
			if r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != tt.wantCode || r.GetField() != tt.wantField {
				t.Errorf("reply = %v, want REJECTED %v on %q", r, tt.wantCode, tt.wantField)
			}
			if len(e.calls) != 0 {
				t.Errorf("handler ran for a refused command: %v", e.calls)
			}
		})
	}
}

func lastReply(t *testing.T, pub *fakePublisher) *fleetv1.Reply {
	t.Helper()
	var rs []*fleetv1.Reply
	testenv.Eventually(t, "a final reply", func() bool {
		rs = pub.replies(t)
		return len(rs) > 0 && rs[len(rs)-1].GetResult() != fleetv1.Reply_ACCEPTED
	})
	return rs[len(rs)-1]
}

// TestSignedReplayAfterJournalBound: a signed command replayed within the
// window runs once, even after the journal's count bound would have
// forgotten its id.
func TestSignedReplayAfterJournalBound(t *testing.T) {
	key := newKey(t)
	e := newSignEnv(t, verifier(t, key))
	first := signed(t, key, "g", issued("first", signNow))
	e.proc.Receive(first.inbound())
	for i := range 4 {
		e.proc.Receive(signed(t, key, "g", issued(fmt.Sprintf("next-%d", i), signNow)).inbound())
	}
	testenv.Eventually(t, "5 replies", func() bool { return len(e.pub.replies(t)) >= 5 })
	// Commands run at once, so replies come in any order.
	var before *fleetv1.Reply
	for _, r := range e.pub.replies(t) {
		if r.GetCommandId() == "first" {
			before = r
		}
	}
	if before == nil {
		t.Fatalf("no reply to the first command among %v", e.pub.replies(t))
	}
	e.proc.Receive(first.inbound())
	testenv.Eventually(t, "the replay's reply", func() bool { return len(e.pub.replies(t)) >= 6 })
	if n := e.called("first"); n != 1 {
		t.Errorf("replayed command ran %d times, want 1", n)
	}
	if again := e.pub.replies(t)[5]; !proto.Equal(again, before) {
		t.Errorf("replay answered %v, want the recorded reply %v", again, before)
	}
}

// TestSigningKeyRotation: while two keys are valid, commands signed by
// either run; once the old key is retired (the gateway's keys file lists
// only the new one), its commands are refused.
func TestSigningKeyRotation(t *testing.T) {
	old, cur := newKey(t), newKey(t)
	for _, tt := range []struct {
		name    string
		trusted []ed25519.PrivateKey
		signer  ed25519.PrivateKey
		want    fleetv1.Reply_Result
	}{
		{"both valid, old key", []ed25519.PrivateKey{old, cur}, old, fleetv1.Reply_SUCCEEDED},
		{"both valid, new key", []ed25519.PrivateKey{old, cur}, cur, fleetv1.Reply_SUCCEEDED},
		{"old retired, old key", []ed25519.PrivateKey{cur}, old, fleetv1.Reply_REJECTED},
		{"old retired, new key", []ed25519.PrivateKey{cur}, cur, fleetv1.Reply_SUCCEEDED},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newSignEnv(t, verifier(t, tt.trusted...))
			e.proc.Receive(signed(t, tt.signer, "g", issued("r", signNow)).inbound())
			if r := lastReply(t, e.pub); r.GetResult() != tt.want {
				t.Errorf("reply = %v, want %v", r, tt.want)
			}
		})
	}
}
