package command_test

import (
	"context"
	"errors"
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
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// fakePublisher records publications; topics in refuse are refused as an
// ACL would.
type fakePublisher struct {
	mu     sync.Mutex
	msgs   []mqttlink.Message
	refuse map[string]bool
	down   bool
}

func (f *fakePublisher) Publish(ctx context.Context, m mqttlink.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse[m.Topic] {
		return fmt.Errorf("%w: %s", mqttlink.ErrRefused, m.Topic)
	}
	if f.down {
		return errors.New("connection down")
	}
	f.msgs = append(f.msgs, m)
	return nil
}

func (f *fakePublisher) replies(t *testing.T) []*fleetv1.Reply {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fleetv1.Reply
	for _, m := range f.msgs {
		if tp, err := topic.Default().Parse(m.Topic); err == nil && tp.Kind == topic.Reply {
			r := new(fleetv1.Reply)
			if err := codec.Unmarshal(codec.FromContentType(m.ContentType), m.Payload, r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
	}
	return out
}

func (f *fakePublisher) topics() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, m := range f.msgs {
		out = append(out, m.Topic)
	}
	return out
}

type env struct {
	proc  *command.Processor
	pub   *fakePublisher
	st    *store.Store
	calls map[string]int
	mu    sync.Mutex
}

func newEnv(t *testing.T, path string, handlers map[topic.Verb]command.Handler) *env {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "state.db")
	}
	st, err := store.Open(store.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pub: &fakePublisher{refuse: map[string]bool{}}, st: st, calls: map[string]int{}}
	if handlers == nil {
		handlers = map[topic.Verb]command.Handler{topic.Rebirth: func(ctx context.Context, x *command.Exec) error {
			e.mu.Lock()
			e.calls[x.Command.GetId()]++
			e.mu.Unlock()
			return nil
		}}
	}
	e.proc, err = command.New(command.Config{Scheme: topic.Default(), Tenant: "t", Gateway: "g", Journal: st,
		Publisher: e.pub, Handlers: handlers, MaxPayload: 2048})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.proc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	return e
}

func (e *env) receive(t *testing.T, verb topic.Verb, cmd *fleetv1.Command, enc codec.Encoding) {
	t.Helper()
	b, err := codec.Marshal(enc, cmd)
	if err != nil {
		t.Fatal(err)
	}
	e.proc.Receive(mqttlink.Inbound{Topic: topic.Default().Command("t", "g", verb), Payload: b, ContentType: enc.ContentType(),
		ResponseTopic: topic.Default().ConsoleReply("t", "g", "c1"), CorrelationData: []byte("c")})
}

func (e *env) awaitReplies(t *testing.T, n int) []*fleetv1.Reply {
	t.Helper()
	var rs []*fleetv1.Reply
	testenv.Eventually(t, fmt.Sprintf("%d replies", n), func() bool { rs = e.pub.replies(t); return len(rs) >= n })
	return rs
}

func rebirth(id string) *fleetv1.Command {
	return &fleetv1.Command{Id: id, Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}
}

func TestRejections(t *testing.T) {
	past := timestamppb.New(time.Now().Add(-time.Second))
	tests := []struct {
		name      string
		verb      topic.Verb
		cmd       *fleetv1.Command
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"expired", topic.Rebirth, &fleetv1.Command{Id: "a", ExpiresAt: past, Body: &fleetv1.Command_Rebirth{}}, fleetv1.Reply_EXPIRED, "expiresAt"},
		{"mismatch", topic.Stop, rebirth("b"), fleetv1.Reply_INVALID_ARGUMENT, "body"},
		{"no id", topic.Rebirth, rebirth(""), fleetv1.Reply_INVALID_ARGUMENT, "id"},
		{"control char id", topic.Rebirth, rebirth("a\x01"), fleetv1.Reply_INVALID_ARGUMENT, "id"},
		{"unsupported", topic.Stop, &fleetv1.Command{Id: "c", Body: &fleetv1.Command_Stop{Stop: &fleetv1.DeploymentRef{Name: "x"}}}, fleetv1.Reply_UNSUPPORTED, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, "", nil)
			e.receive(t, tt.verb, tt.cmd, codec.JSON)
			r := e.awaitReplies(t, 1)[0]
			if r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != tt.wantCode || r.GetField() != tt.wantField {
				t.Errorf("reply = %v, want REJECTED %v on %q", r, tt.wantCode, tt.wantField)
			}
			if len(e.calls) != 0 {
				t.Errorf("handler ran for a rejected command: %v", e.calls)
			}
		})
	}
}

func TestDuplicateRunsOnce(t *testing.T) {
	e := newEnv(t, "", nil)
	e.receive(t, topic.Rebirth, rebirth("x"), codec.Protobuf)
	first := e.awaitReplies(t, 1)[0]
	e.receive(t, topic.Rebirth, rebirth("x"), codec.JSON)
	second := e.awaitReplies(t, 2)[1]
	if !proto.Equal(first, second) {
		t.Errorf("duplicate reply %v, want recorded %v", second, first)
	}
	if e.calls["x"] != 1 {
		t.Errorf("handler calls = %d, want 1", e.calls["x"])
	}
}

func TestHandlerOutcomes(t *testing.T) {
	handlers := map[topic.Verb]command.Handler{
		topic.Start: func(ctx context.Context, x *command.Exec) error { panic("boom") },
		topic.Stop: func(ctx context.Context, x *command.Exec) error {
			return fmt.Errorf("stopping: %w", errdefs.ErrNotFound)
		},
		topic.Restart: func(ctx context.Context, x *command.Exec) error {
			x.Accept()
			x.Accept()
			x.Reply.Status = &fleetv1.DeploymentStatus{Name: "web"}
			return nil
		},
	}
	e := newEnv(t, "", handlers)
	ref := &fleetv1.DeploymentRef{Name: "web"}
	e.receive(t, topic.Start, &fleetv1.Command{Id: "p", Body: &fleetv1.Command_Start{Start: ref}}, codec.Protobuf)
	e.receive(t, topic.Stop, &fleetv1.Command{Id: "n", Body: &fleetv1.Command_Stop{Stop: ref}}, codec.Protobuf)
	e.receive(t, topic.Restart, &fleetv1.Command{Id: "r", Body: &fleetv1.Command_Restart{Restart: ref}}, codec.Protobuf)
	rs := e.awaitReplies(t, 4)
	got := map[string][]fleetv1.Reply_Result{}
	for _, r := range rs {
		got[r.GetCommandId()] = append(got[r.GetCommandId()], r.GetResult())
		switch {
		case r.GetCommandId() == "p" && r.GetCode() != fleetv1.Reply_INTERNAL:
			t.Errorf("panic reply = %v, want INTERNAL", r)
		case r.GetCommandId() == "n" && r.GetCode() != fleetv1.Reply_NOT_FOUND:
			t.Errorf("not-found reply = %v, want NOT_FOUND", r)
		case r.GetCommandId() == "r" && r.GetResult() == fleetv1.Reply_SUCCEEDED && r.GetStatus().GetName() != "web":
			t.Errorf("restart reply = %v, want status detail", r)
		}
	}
	if fmt.Sprint(got["p"]) != "[FAILED]" || fmt.Sprint(got["n"]) != "[FAILED]" || len(got["r"]) != 2 {
		t.Errorf("results = %v, want p and n FAILED, r ACCEPTED then SUCCEEDED", got)
	}
}

func TestResponseTopicRefusedFallsBack(t *testing.T) {
	e := newEnv(t, "", nil)
	rt := topic.Default().ConsoleReply("t", "other", "c1")
	e.pub.refuse[rt] = true
	b, _ := codec.Marshal(codec.Protobuf, rebirth("f"))
	e.proc.Receive(mqttlink.Inbound{Topic: topic.Default().Command("t", "g", topic.Rebirth), Payload: b, ResponseTopic: rt, CorrelationData: []byte("c")})
	e.awaitReplies(t, 1)
	if got, want := e.pub.topics(), topic.Default().Reply("t", "g"); len(got) != 1 || len(e.pub.msgs) != 1 || got[0] != want {
		t.Errorf("published on %v, want [%s]", got, want)
	}
}

// A command journaled before a crash runs on the next start, and a reply
// the broker never acknowledged is sent again.
func TestResumeAndRedeliver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := store.Open(store.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := codec.Marshal(codec.Protobuf, rebirth("taken"))
	st.Begin(store.Command{ID: "taken", Verb: "rebirth", Payload: payload, ContentType: codec.ContentTypeProtobuf})
	st.Begin(store.Command{ID: "done", Verb: "rebirth"})
	raw, _ := proto.Marshal(&fleetv1.Reply{CommandId: "done", Result: fleetv1.Reply_SUCCEEDED})
	st.Finish("done", raw)
	st.Close()

	e := newEnv(t, path, nil)
	e.awaitReplies(t, 1)
	if e.calls["taken"] != 1 {
		t.Errorf("resumed command ran %d times, want 1", e.calls["taken"])
	}
	e.proc.Redeliver(context.Background())
	var ids []string
	testenv.Eventually(t, "redelivered reply", func() bool {
		ids = nil
		for _, r := range e.pub.replies(t) {
			ids = append(ids, r.GetCommandId())
		}
		return len(ids) >= 2
	})
	if un, _ := e.st.Undelivered(); len(un) != 0 {
		t.Errorf("undelivered after Redeliver: %v", un)
	}
}

func TestDetachedCommandDoesNotBlockTheNext(t *testing.T) {
	release := make(chan struct{})
	handlers := map[topic.Verb]command.Handler{
		topic.Deploy: func(ctx context.Context, x *command.Exec) error {
			finish := x.Detach()
			go func() {
				<-release
				x.Reply.Status = &fleetv1.DeploymentStatus{Name: "web", Phase: fleetv1.DeploymentStatus_RUNNING}
				finish(nil)
			}()
			return nil
		},
		topic.Rebirth: func(ctx context.Context, x *command.Exec) error { return nil },
	}
	e := newEnv(t, "", handlers)
	e.receive(t, topic.Deploy, &fleetv1.Command{Id: "slow", Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{}}}, codec.Protobuf)
	e.receive(t, topic.Rebirth, rebirth("quick"), codec.Protobuf)
	rs := e.awaitReplies(t, 2)
	got := map[string]fleetv1.Reply_Result{}
	for _, r := range rs {
		got[r.GetCommandId()] = r.GetResult()
	}
	if got["slow"] != fleetv1.Reply_ACCEPTED || got["quick"] != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("before release: %v, want slow ACCEPTED and quick SUCCEEDED", got)
	}
	if un, _ := e.st.Unfinished(); len(un) != 1 || un[0].ID != "slow" {
		t.Errorf("unfinished = %v, want the detached command", un)
	}
	close(release)
	final := e.awaitReplies(t, 3)[2]
	if final.GetCommandId() != "slow" || final.GetResult() != fleetv1.Reply_SUCCEEDED || final.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Errorf("final reply = %v, want slow SUCCEEDED with status", final)
	}
}
