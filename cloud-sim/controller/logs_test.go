package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// chunkOf is a chunk of lines named by their text.
func chunkOf(seq uint64, texts ...string) *fleetv1.LogChunk {
	c := &fleetv1.LogChunk{RequestId: "c-1", GatewayId: "gw-1", Sequence: seq}
	for _, t := range texts {
		c.Lines = append(c.Lines, &fleetv1.LogLine{Timestamp: timestamppb.New(time.Unix(1, 0)), Stream: fleetv1.LogLine_STDOUT, Service: "web", Text: t})
	}
	return c
}

func finalOf(seq uint64, end fleetv1.LogChunk_End, texts ...string) *fleetv1.LogChunk {
	c := chunkOf(seq, texts...)
	c.Final, c.Ended = true, end
	return c
}

// describe renders events compactly: a line as its text, a drop as
// "dropped(by lines/bytes/chunks)", the end as "end(REASON CODE)".
func describeEvents(evs []LogEvent) []string {
	var out []string
	for _, ev := range evs {
		switch {
		case ev.Line != nil:
			out = append(out, ev.Line.Text)
		case ev.Dropped != nil:
			d := ev.Dropped
			out = append(out, fmt.Sprintf("dropped(%s %d/%d/%d)", d.By, d.Lines, d.Bytes, d.Chunks))
		case ev.End != nil:
			out = append(out, strings.TrimSpace("end("+ev.End.Reason+" "+ev.End.Code)+")")
		}
	}
	return out
}

// readAll reads a stream's events until its end, or fails at the
// deadline.
func readAll(t *testing.T, o interface {
	Next(context.Context) ([]LogEvent, error)
}) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var all []LogEvent
	for {
		evs, err := o.Next(ctx)
		if errors.Is(err, io.EOF) {
			return describeEvents(all)
		}
		if err != nil {
			t.Fatalf("after %q: %v", describeEvents(all), err)
		}
		all = append(all, evs...)
	}
}

// TestLogOrder: chunks come out in sequence order whatever order they
// arrive in, each once; the final chunk ends the stream; drops are
// reported where they happened.
func TestLogOrder(t *testing.T) {
	dropped := chunkOf(1)
	dropped.DroppedLines, dropped.DroppedBytes = 3, 120
	failed := finalOf(1, fleetv1.LogChunk_ERROR)
	failed.Code, failed.Message = fleetv1.Reply_RUNTIME_UNAVAILABLE, "engine gone"
	tests := []struct {
		name   string
		chunks []*fleetv1.LogChunk
		want   []string
	}{
		{"in order", []*fleetv1.LogChunk{chunkOf(0, "a", "b"), chunkOf(1, "c"), finalOf(2, fleetv1.LogChunk_COMPLETE)},
			[]string{"a", "b", "c", "end(COMPLETE)"}},
		{"reordered", []*fleetv1.LogChunk{chunkOf(2, "c"), chunkOf(0, "a"), finalOf(3, fleetv1.LogChunk_UNTIL, "d"), chunkOf(1, "b")},
			[]string{"a", "b", "c", "d", "end(UNTIL)"}},
		{"duplicates (QoS 1)", []*fleetv1.LogChunk{chunkOf(0, "a"), chunkOf(0, "a"), chunkOf(2, "c"), chunkOf(1, "b"), chunkOf(2, "c"), chunkOf(1, "b"), finalOf(3, fleetv1.LogChunk_COMPLETE)},
			[]string{"a", "b", "c", "end(COMPLETE)"}},
		{"a drop notice of the gateway's", []*fleetv1.LogChunk{chunkOf(0, "a"), dropped, finalOf(2, fleetv1.LogChunk_CANCELED, "z")},
			[]string{"a", "dropped(gateway 3/120/0)", "z", "end(CANCELED)"}},
		{"nothing after the final chunk", []*fleetv1.LogChunk{chunkOf(0, "a"), finalOf(1, fleetv1.LogChunk_CONTAINER_GONE), chunkOf(2, "late")},
			[]string{"a", "end(CONTAINER_GONE)"}},
		{"an error ends it with its code", []*fleetv1.LogChunk{chunkOf(0, "a"), failed},
			[]string{"a", "end(ERROR RUNTIME_UNAVAILABLE)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newLogOrder()
			for _, c := range tt.chunks {
				o.chunk(c)
			}
			if got := readAll(t, o); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLogOrderBounded: a chunk that never comes is given up once
// maxPendingChunks wait behind it, and a reader too slow for
// maxQueuedEvents loses lines with a notice saying how many.
func TestLogOrderBounded(t *testing.T) {
	t.Run("a lost chunk", func(t *testing.T) {
		o := newLogOrder()
		o.chunk(chunkOf(0, "first"))
		for seq := uint64(2); seq <= maxPendingChunks+2; seq++ {
			o.chunk(chunkOf(seq))
		}
		o.chunk(finalOf(maxPendingChunks+3, fleetv1.LogChunk_COMPLETE, "last"))
		want := []string{"first", "dropped(cloud 0/0/1)", "last", "end(COMPLETE)"}
		if got := readAll(t, o); !slices.Equal(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	t.Run("a slow reader", func(t *testing.T) {
		o := newLogOrder()
		texts := make([]string, maxQueuedEvents+5)
		for i := range texts {
			texts[i] = "xx"
		}
		o.chunk(chunkOf(0, texts...))
		o.chunk(finalOf(1, fleetv1.LogChunk_COMPLETE, "last"))
		got := readAll(t, o)
		want := []string{"dropped(cloud 6/14/0)", "end(COMPLETE)"} // five "xx" and "last"
		if len(got) != maxQueuedEvents+len(want) || !slices.Equal(got[maxQueuedEvents:], want) {
			t.Errorf("got %d events ending %q, want %d ending %q", len(got), got[max(0, len(got)-3):], maxQueuedEvents+len(want), want)
		}
	})
}

func alwaysOnline(string, string) bool { return true }

// fakeLogsLink records what a stream subscribes to and sends, in order.
type fakeLogsLink struct {
	mu      sync.Mutex
	calls   []string
	sendErr error
}

func (f *fakeLogsLink) SubscribeLogs(_ context.Context, tenant, gateway, id string) (func(context.Context) error, error) {
	f.note("subscribe " + topic.Default().LogStream(tenant, gateway, id))
	return func(context.Context) error { f.note("unsubscribe " + id); return nil }, nil
}

func (f *fakeLogsLink) SendOne(_ context.Context, tenant, gateway string, cmd *fleetv1.Command, _ time.Duration) error {
	switch {
	case cmd.GetLogs() != nil:
		f.note(fmt.Sprintf("logs %s to %s/%s follow=%v", cmd.GetId(), tenant, gateway, cmd.GetLogs().GetFollow()))
	case cmd.GetCancelLogs() != nil:
		f.note(fmt.Sprintf("cancel-logs %s to %s/%s", cmd.GetCancelLogs().GetRequestId(), tenant, gateway))
	}
	return f.sendErr
}

func (f *fakeLogsLink) note(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeLogsLink) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func reply(id string, res fleetv1.Reply_Result, code fleetv1.Reply_Code) *fleetv1.Reply {
	return &fleetv1.Reply{CommandId: id, Result: res, Code: code}
}

// TestLogStreams: a stream subscribes before it sends the logs command;
// it ends on its final chunk, on a final reply other than SUCCEEDED, after
// a SUCCEEDED reply whose final chunk does not come, or when the gateway
// does not accept in time; closing a follow the gateway has not ended
// sends cancel-logs, and only then.
func TestLogStreams(t *testing.T) {
	gwTopic := topic.Topic{Tenant: "acme", Gateway: "gw-1", Kind: topic.LogStream, Request: "c-1"}
	tests := []struct {
		name      string
		follow    bool
		feed      func(ls *logStreams, goOffline func())
		want      []string
		wantCalls []string // after subscribe and logs
	}{
		{"final chunk", true, func(ls *logStreams, _ func()) {
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_ACCEPTED, 0))
			ls.chunk(gwTopic, chunkOf(1, "b"))
			ls.chunk(gwTopic, chunkOf(0, "a"))
			ls.chunk(gwTopic, finalOf(2, fleetv1.LogChunk_UNTIL))
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_SUCCEEDED, 0))
		}, []string{"a", "b", "end(UNTIL)"}, []string{"unsubscribe c-1"}},
		{"failed reply", true, func(ls *logStreams, _ func()) {
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_ACCEPTED, 0))
			ls.chunk(gwTopic, chunkOf(0, "a"))
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_FAILED, fleetv1.Reply_RUNTIME_UNAVAILABLE))
		}, []string{"a", "end(FAILED RUNTIME_UNAVAILABLE)"}, []string{"unsubscribe c-1"}},
		{"rejected: no such deployment", false, func(ls *logStreams, _ func()) {
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_REJECTED, fleetv1.Reply_NOT_FOUND))
		}, []string{"end(REJECTED NOT_FOUND)"}, []string{"unsubscribe c-1"}},
		{"succeeded without a final chunk", false, func(ls *logStreams, _ func()) {
			ls.chunk(gwTopic, chunkOf(0, "a"))
			ls.chunk(gwTopic, chunkOf(2, "c"))
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_SUCCEEDED, 0))
		}, []string{"a", "dropped(cloud 0/0/1)", "c", "end(SUCCEEDED)"}, []string{"unsubscribe c-1"}},
		{"another gateway's chunk and reply are not this stream's", false, func(ls *logStreams, _ func()) {
			ls.chunk(topic.Topic{Tenant: "acme", Gateway: "gw-2", Kind: topic.LogStream, Request: "c-1"}, finalOf(0, fleetv1.LogChunk_COMPLETE, "forged"))
			ls.reply("acme", "gw-2", reply("c-1", fleetv1.Reply_FAILED, fleetv1.Reply_NOT_FOUND))
			ls.chunk(gwTopic, finalOf(0, fleetv1.LogChunk_COMPLETE, "real"))
		}, []string{"real", "end(COMPLETE)"}, []string{"unsubscribe c-1"}},
		{"no answer: a follow is canceled", true, func(*logStreams, func()) {},
			[]string{"end(TIMEOUT)"}, []string{"cancel-logs c-1 to acme/gw-1", "unsubscribe c-1"}},
		{"the gateway goes offline", true, func(ls *logStreams, goOffline func()) {
			ls.reply("acme", "gw-1", reply("c-1", fleetv1.Reply_ACCEPTED, 0))
			ls.chunk(gwTopic, chunkOf(0, "a"))
			goOffline()
		}, []string{"a", "end(GATEWAY_OFFLINE)"}, []string{"cancel-logs c-1 to acme/gw-1", "unsubscribe c-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			link := &fakeLogsLink{}
			var offline atomic.Bool
			ls := newLogStreams(link, func(tenant, id string) bool { return !(offline.Load() && tenant == "acme" && id == "gw-1") },
				slog.New(slog.DiscardHandler), time.Now)
			ls.tm = logTimings{accept: 200 * time.Millisecond, grace: 50 * time.Millisecond, slack: time.Minute, bound: time.Minute, online: 10 * time.Millisecond}
			s, err := ls.start(context.Background(), LogsRequest{Tenant: "acme", Gateway: "gw-1", Deployment: "web", Follow: tt.follow}, "c-1")
			if err != nil {
				t.Fatal(err)
			}
			tt.feed(ls, func() { offline.Store(true) })
			got := readAll(t, s)
			s.Close()
			if !slices.Equal(got, tt.want) {
				t.Errorf("events %q, want %q", got, tt.want)
			}
			wantCalls := append([]string{"subscribe fleet/v1/acme/gw-1/logs/c-1", fmt.Sprintf("logs c-1 to acme/gw-1 follow=%v", tt.follow)}, tt.wantCalls...)
			if calls := link.Calls(); !slices.Equal(calls, wantCalls) {
				t.Errorf("calls %q, want %q", calls, wantCalls)
			}
		})
	}
}

// TestLogStreamClientGone: a reader that goes away ends a follow on the
// gateway (cancel-logs naming the logs command), and the stream's chunks
// are no longer routed; a tail that goes away is not canceled.
func TestLogStreamClientGone(t *testing.T) {
	for _, follow := range []bool{true, false} {
		t.Run(fmt.Sprintf("follow=%v", follow), func(t *testing.T) {
			link := &fakeLogsLink{}
			ls := newLogStreams(link, alwaysOnline, slog.New(slog.DiscardHandler), time.Now)
			s, err := ls.start(context.Background(), LogsRequest{Tenant: "acme", Gateway: "gw-1", Deployment: "web", Follow: follow}, "c-7")
			if err != nil {
				t.Fatal(err)
			}
			ls.reply("acme", "gw-1", reply("c-7", fleetv1.Reply_ACCEPTED, 0))
			ls.chunk(topic.Topic{Tenant: "acme", Gateway: "gw-1", Kind: topic.LogStream, Request: "c-7"}, chunkOf(0, "a"))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if evs, err := s.Next(ctx); err != nil || len(evs) != 1 {
				t.Fatalf("Next = %q, %v", describeEvents(evs), err)
			}
			s.Close() // the HTTP client went away
			want := []string{"subscribe fleet/v1/acme/gw-1/logs/c-7", fmt.Sprintf("logs c-7 to acme/gw-1 follow=%v", follow)}
			if follow {
				want = append(want, "cancel-logs c-7 to acme/gw-1")
			}
			want = append(want, "unsubscribe c-7")
			if calls := link.Calls(); !slices.Equal(calls, want) {
				t.Errorf("calls %q, want %q", calls, want)
			}
			if ls.get("acme", "gw-1", "c-7") != nil {
				t.Error("a closed stream is still routed")
			}
		})
	}
}

// TestLogStreamSendFails: a logs command the broker did not take is an
// error, the stream is not left subscribed, and a follow never sent is
// not canceled.
func TestLogStreamSendFails(t *testing.T) {
	for _, follow := range []bool{false, true} {
		link := &fakeLogsLink{sendErr: errors.New("broker gone")}
		ls := newLogStreams(link, alwaysOnline, slog.New(slog.DiscardHandler), time.Now)
		if _, err := ls.start(context.Background(), LogsRequest{Tenant: "acme", Gateway: "gw-1", Deployment: "web", Follow: follow}, "c-1"); err == nil {
			t.Fatal("start succeeded")
		}
		want := []string{"subscribe fleet/v1/acme/gw-1/logs/c-1", fmt.Sprintf("logs c-1 to acme/gw-1 follow=%v", follow), "unsubscribe c-1"}
		if calls := link.Calls(); !slices.Equal(calls, want) {
			t.Errorf("follow=%v: calls %q, want %q", follow, calls, want)
		}
		if ls.get("acme", "gw-1", "c-1") != nil {
			t.Error("the stream is still routed")
		}
	}
}

// TestCheckLogsRequest: bad values are refused naming the field.
func TestCheckLogsRequest(t *testing.T) {
	now := time.Now()
	ok := LogsRequest{Tenant: "acme", Gateway: "gw-1", Deployment: "web"}
	tests := []struct {
		name  string
		edit  func(*LogsRequest)
		field string
	}{
		{"ok", func(*LogsRequest) {}, ""},
		{"bad deployment", func(r *LogsRequest) { r.Deployment = "a/b" }, "name"},
		{"bad service", func(r *LogsRequest) { r.Service = "+" }, "service"},
		{"until without follow", func(r *LogsRequest) { r.Until = now.Add(time.Minute) }, "until"},
		{"until in the past", func(r *LogsRequest) { r.Follow, r.Until = true, now.Add(-time.Minute) }, "until"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.edit(&r)
			err := checkLogsRequest(r, now)
			if got := errdefs.Field(err); got != tt.field {
				t.Errorf("got %v (field %q), want field %q", err, got, tt.field)
			}
		})
	}
}
