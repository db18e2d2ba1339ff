package handlers_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/handlers"
	"github.com/fleet-agent/fleet/agent/logs"
	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// wire records replies and chunks in the order they were published.
type wire struct {
	mu     sync.Mutex
	events []any // *fleetv1.Reply or *fleetv1.LogChunk
}

func (w *wire) Publish(_ context.Context, m mqttlink.Message) error {
	r := new(fleetv1.Reply)
	if err := codec.Unmarshal(codec.FromContentType(m.ContentType), m.Payload, r); err != nil {
		return err
	}
	w.add(r)
	return nil
}

func (w *wire) PublishChunk(_ context.Context, c *fleetv1.LogChunk) error {
	w.add(proto.CloneOf(c))
	return nil
}

func (w *wire) add(m any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, m)
}

// of returns the replies to id, and the chunks of stream id.
func (w *wire) of(id string) (replies []*fleetv1.Reply, chunks []*fleetv1.LogChunk) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.events {
		switch m := e.(type) {
		case *fleetv1.Reply:
			if m.GetCommandId() == id {
				replies = append(replies, m)
			}
		case *fleetv1.LogChunk:
			if m.GetRequestId() == id {
				chunks = append(chunks, m)
			}
		}
	}
	return replies, chunks
}

// finalChunkFirst: the final chunk of id came before its final reply.
func (w *wire) finalChunkFirst(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.events {
		switch m := e.(type) {
		case *fleetv1.LogChunk:
			if m.GetRequestId() == id && m.GetFinal() {
				return true
			}
		case *fleetv1.Reply:
			if m.GetCommandId() == id && m.GetResult() != fleetv1.Reply_ACCEPTED {
				return false
			}
		}
	}
	return false
}

// finalOf is the reply to id that is not ACCEPTED.
func finalOf(w *wire, id string) *fleetv1.Reply {
	rs, _ := w.of(id)
	for _, r := range rs {
		if r.GetResult() != fleetv1.Reply_ACCEPTED {
			return r
		}
	}
	return nil
}

type logsEnv struct {
	proc *command.Processor
	wire *wire
	eng  *engine.FakeLogs
	web  string // the container of deployment web
}

// newLogsEnv runs a processor with the logs verbs over a fake engine
// holding deployment web; the journal is st (opened by the caller, so a
// test can journal a command "before a restart").
func newLogsEnv(t *testing.T, st *store.Store, cut map[string]bool) *logsEnv {
	t.Helper()
	e := &logsEnv{wire: &wire{}, eng: engine.NewFakeLogs(engine.NewFake("t/g"))}
	e.eng.Load("img:1", "x")
	var err error
	if e.web, err = e.eng.Create(t.Context(), "fleet-web-r1", &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "img:1"}, engine.Host{}); err != nil {
		t.Fatal(err)
	}
	e.eng.Start(t.Context(), e.web)
	e.eng.Write(e.web, engine.LogEntry{Text: []byte("hello")})
	m, err := logs.New(logs.Config{Engine: e.eng, Publisher: e.wire, Gateway: "g"})
	if err != nil {
		t.Fatal(err)
	}
	verbs, err := handlers.NewLogs(handlers.LogsConfig{Logs: m, Journal: st, Cut: cut})
	if err != nil {
		t.Fatal(err)
	}
	verbs[topic.Rebirth] = func(context.Context, *command.Exec) error { return nil }
	e.proc, err = command.New(command.Config{Scheme: topic.Default(), Tenant: "t", Gateway: "g", Journal: st, Publisher: e.wire, Handlers: verbs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.proc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func (e *logsEnv) send(t *testing.T, cmd *fleetv1.Command) {
	t.Helper()
	b, err := codec.Marshal(codec.JSON, cmd)
	if err != nil {
		t.Fatal(err)
	}
	e.proc.Receive(mqttlink.Inbound{Topic: topic.Default().Command("t", "g", topic.VerbOf(cmd)), Payload: b, ContentType: codec.JSON.ContentType()})
}

func (e *logsEnv) await(t *testing.T, id string, n int) []*fleetv1.Reply {
	t.Helper()
	var rs []*fleetv1.Reply
	testenv.Eventually(t, "replies to "+id, func() bool { rs, _ = e.wire.of(id); return len(rs) >= n })
	return rs
}

func logsCmd(id string, l *fleetv1.Logs) *fleetv1.Command {
	return &fleetv1.Command{Id: id, Body: &fleetv1.Command_Logs{Logs: l}}
}

func cancelCmd(id, request string) *fleetv1.Command {
	return &fleetv1.Command{Id: id, Body: &fleetv1.Command_CancelLogs{CancelLogs: &fleetv1.CancelLogs{RequestId: request}}}
}

// TestLogsRefusals: refusals come without ACCEPTED and name the command's
// field; NOT_FOUND and the stream bound are REJECTED, not FAILED.
func TestLogsRefusals(t *testing.T) {
	tests := []struct {
		name      string
		cmd       *fleetv1.Command
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"id not a topic level", logsCmd("a/b", &fleetv1.Logs{Deployment: "web"}), fleetv1.Reply_INVALID_ARGUMENT, "id"},
		{"id with a space", logsCmd("a b", &fleetv1.Logs{Deployment: "web"}), fleetv1.Reply_INVALID_ARGUMENT, "id"},
		{"unknown deployment", logsCmd("l1", &fleetv1.Logs{Deployment: "db"}), fleetv1.Reply_NOT_FOUND, "logs.deployment"},
		{"unknown service", logsCmd("l2", &fleetv1.Logs{Deployment: "web", Service: "db"}), fleetv1.Reply_NOT_FOUND, "logs.service"},
		{"bad deployment name", logsCmd("l3", &fleetv1.Logs{Deployment: "Web!"}), fleetv1.Reply_INVALID_ARGUMENT, "logs.deployment"},
		{"cancel of a command never sent", cancelCmd("c1", "nope"), fleetv1.Reply_NOT_FOUND, "cancelLogs.requestId"},
		{"cancel without id", cancelCmd("c2", ""), fleetv1.Reply_INVALID_ARGUMENT, "cancelLogs.requestId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newLogsEnv(t, openStore(t, t.TempDir()), nil)
			e.send(t, tt.cmd)
			r := e.await(t, tt.cmd.GetId(), 1)[0]
			if r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != tt.wantCode || r.GetField() != tt.wantField {
				t.Errorf("reply = %v/%v on %q (%s), want REJECTED/%v on %q", r.GetResult(), r.GetCode(), r.GetField(), r.GetMessage(), tt.wantCode, tt.wantField)
			}
			if _, chunks := e.wire.of(tt.cmd.GetId()); len(chunks) != 0 {
				t.Errorf("a refused command published %d chunks", len(chunks))
			}
		})
	}
}

// TestLogsFollowDoesNotBlock: a follow is ACCEPTED and runs while the
// executor takes the next commands (another logs, a rebirth); a fifth
// stream is refused; cancel-logs ends the follow (final chunk CANCELED,
// then its SUCCEEDED reply) and succeeds, and again once it has ended.
func TestLogsFollowDoesNotBlock(t *testing.T) {
	e := newLogsEnv(t, openStore(t, t.TempDir()), nil)
	for _, id := range []string{"f1", "f2", "f3", "f4"} {
		e.send(t, logsCmd(id, &fleetv1.Logs{Deployment: "web", Follow: true}))
		if r := e.await(t, id, 1)[0]; r.GetResult() != fleetv1.Reply_ACCEPTED {
			t.Fatalf("%s: %v, want ACCEPTED", id, r)
		}
	}
	e.send(t, &fleetv1.Command{Id: "rb", Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}})
	if r := e.await(t, "rb", 1)[0]; r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("rebirth while 4 follows run = %v, want SUCCEEDED", r)
	}
	e.send(t, logsCmd("f5", &fleetv1.Logs{Deployment: "web"}))
	if r := e.await(t, "f5", 1)[0]; r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != fleetv1.Reply_POLICY_DENIED {
		t.Errorf("fifth stream = %v, want REJECTED POLICY_DENIED", r)
	}

	e.send(t, cancelCmd("c1", "f1"))
	if r := e.await(t, "c1", 1)[0]; r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("cancel-logs = %v, want SUCCEEDED", r)
	}
	e.await(t, "f1", 2)
	_, chunks := e.wire.of("f1")
	if r := finalOf(e.wire, "f1"); r.GetResult() != fleetv1.Reply_SUCCEEDED || len(chunks) == 0 || chunks[len(chunks)-1].GetEnded() != fleetv1.LogChunk_CANCELED {
		t.Errorf("canceled follow: reply %v, chunks %v; want SUCCEEDED after a final chunk ended CANCELED", r, chunks)
	}
	if !e.wire.finalChunkFirst("f1") {
		t.Error("the final reply came before the final chunk")
	}
	if got := chunks[0].GetLines(); len(got) != 1 || got[0].GetText() != "hello" {
		t.Errorf("lines %v, want hello", got)
	}
	e.send(t, cancelCmd("c2", "f1"))
	if r := e.await(t, "c2", 1)[0]; r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("cancel-logs of an ended stream = %v, want SUCCEEDED", r)
	}
	e.send(t, logsCmd("f6", &fleetv1.Logs{Deployment: "web"}))
	// ACCEPTED and the final reply are published each in a goroutine of
	// its own: either may arrive first.
	if rs := e.await(t, "f6", 2); rs[0].GetResult()+rs[1].GetResult() != fleetv1.Reply_ACCEPTED+fleetv1.Reply_SUCCEEDED {
		t.Errorf("a stream once one ended = %v, want ACCEPTED and SUCCEEDED", rs)
	}
}

// TestLogsNotResumed: a logs command journaled before a restart and never
// finished is answered FAILED after a final chunk ended ERROR, and is not
// streamed again.
func TestLogsNotResumed(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	payload, err := codec.Marshal(codec.Protobuf, logsCmd("old", &fleetv1.Logs{Deployment: "web", Follow: true}))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Begin(store.Command{ID: "old", Verb: string(topic.Logs), ReceivedAt: time.Now().Add(-time.Minute),
		Payload: payload, ContentType: codec.Protobuf.ContentType()}); err != nil {
		t.Fatal(err)
	}
	e := newLogsEnv(t, st, map[string]bool{"old": true})
	r := e.await(t, "old", 1)[0]
	_, chunks := e.wire.of("old")
	if r.GetResult() != fleetv1.Reply_FAILED || r.GetMessage() != logs.ErrStopped.Error() {
		t.Errorf("reply %v, want FAILED with %q", r, logs.ErrStopped)
	}
	if len(chunks) != 1 || !chunks[0].GetFinal() || chunks[0].GetEnded() != fleetv1.LogChunk_ERROR || len(chunks[0].GetLines()) != 0 {
		t.Errorf("chunks %v, want one final chunk ended ERROR without lines", chunks)
	}
}
