package logs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/logs"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// recorder is a Publisher that keeps every chunk.
type recorder struct {
	mu     sync.Mutex
	chunks []*fleetv1.LogChunk
}

func (r *recorder) PublishChunk(_ context.Context, c *fleetv1.LogChunk) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.chunks = append(r.chunks, proto.CloneOf(c))
	return nil
}

func (r *recorder) all() []*fleetv1.LogChunk {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*fleetv1.LogChunk(nil), r.chunks...)
}

// lines are the texts of every chunk's lines, in order.
func (r *recorder) lines() []string {
	var out []string
	for _, c := range r.all() {
		for _, l := range c.GetLines() {
			out = append(out, l.GetText())
		}
	}
	return out
}

// last is the final chunk; the test fails unless exactly the last chunk is
// final and the sequence counts from 0 without gaps.
func (r *recorder) last(t *testing.T) *fleetv1.LogChunk {
	t.Helper()
	cs := r.all()
	if len(cs) == 0 {
		t.Fatal("no chunk published")
	}
	for i, c := range cs {
		if c.GetSequence() != uint64(i) {
			t.Errorf("chunk %d has sequence %d", i, c.GetSequence())
		}
		if c.GetFinal() != (i == len(cs)-1) {
			t.Errorf("chunk %d of %d: final = %v", i, len(cs), c.GetFinal())
		}
		if c.GetRequestId() != "req-1" || c.GetGatewayId() != "gw" {
			t.Errorf("chunk %d: request %q gateway %q, want req-1 gw", i, c.GetRequestId(), c.GetGatewayId())
		}
	}
	return cs[len(cs)-1]
}

type env struct {
	eng *engine.FakeLogs
	pub *recorder
	m   *logs.Manager
}

// newEnv is a manager over a fake engine with deployment web (one
// container, running); call it inside the synctest bubble.
func newEnv(t *testing.T, cfg logs.Config) (*env, string) {
	t.Helper()
	e := &env{eng: engine.NewFakeLogs(engine.NewFake("t/gw")), pub: &recorder{}}
	cfg.Engine, cfg.Publisher, cfg.Gateway = e.eng, e.pub, "gw"
	if cfg.Rate == 0 {
		cfg.Rate = -1
	}
	var err error
	if e.m, err = logs.New(cfg); err != nil {
		t.Fatal(err)
	}
	return e, e.run(t, "fleet-web-r1", "web", 1)
}

// run creates and starts container cname of deployment name at revision.
func (e *env) run(t *testing.T, cname, name string, rev int64) string {
	t.Helper()
	ctx := t.Context()
	e.eng.Load("img:1", "x")
	id, err := e.eng.Create(ctx, cname, &fleetv1.DeploymentSpec{Name: name, Revision: rev, Image: "img:1"}, engine.Host{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.eng.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	return id
}

func (e *env) write(id string, n int, format string) {
	for i := range n {
		e.eng.Write(id, engine.LogEntry{Text: []byte(fmt.Sprintf(format, i))})
	}
}

// start opens and runs req; the returned channel gets Run's error.
func (e *env) start(t *testing.T, req logs.Request) <-chan error {
	t.Helper()
	s, err := e.m.Open(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(t.Context()) }()
	return done
}

func TestTailSinceAndChunks(t *testing.T) {
	base := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		chunkSize int
		req       logs.Request
		want      []string // first and last line
		wantN     int
		minChunks int
	}{
		{"default tail is 100", 0, logs.Request{}, []string{"line 050", "line 149"}, 100, 1},
		{"tail 7", 0, logs.Request{Tail: 7}, []string{"line 143", "line 149"}, 7, 1},
		{"since without tail: every line since", 0, logs.Request{Since: base.Add(140 * time.Second)}, []string{"line 140", "line 149"}, 10, 1},
		{"tail beats since", 0, logs.Request{Since: base, Tail: 3}, []string{"line 147", "line 149"}, 3, 1},
		// 150 lines of 1008 bytes are 6 chunks of at most 16 KiB.
		{"chunks bounded", 16 << 10, logs.Request{Tail: 150}, []string{"line 000", "line 149"}, 150, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e, id := newEnv(t, logs.Config{ChunkSize: tt.chunkSize})
				pad := strings.Repeat(".", 1000)
				for i := range 150 {
					e.eng.Write(id, engine.LogEntry{Time: base.Add(time.Duration(i) * time.Second), Text: fmt.Appendf(nil, "line %03d%s", i, pad)})
				}
				req := tt.req
				req.ID, req.Deployment = "req-1", "web"
				if err := <-e.start(t, req); err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				last := e.pub.last(t)
				if last.GetEnded() != fleetv1.LogChunk_COMPLETE || last.GetCode() != fleetv1.Reply_OK {
					t.Errorf("final chunk ended %v code %v, want COMPLETE OK", last.GetEnded(), last.GetCode())
				}
				got := e.pub.lines()
				if len(got) != tt.wantN || !strings.HasPrefix(got[0], tt.want[0]) || !strings.HasPrefix(got[len(got)-1], tt.want[1]) {
					t.Fatalf("got %d lines (%.8q … %.8q), want %d (%q … %q)", len(got), got[0], got[len(got)-1], tt.wantN, tt.want[0], tt.want[1])
				}
				chunks := e.pub.all()
				for _, c := range chunks {
					size := 0
					for _, l := range c.GetLines() {
						size += len(l.GetText())
						if l.GetService() != "web" || l.GetStream() != fleetv1.LogLine_STDOUT || l.GetTimestamp() == nil {
							t.Fatalf("line %v: want service web, STDOUT, a timestamp", l)
						}
					}
					if max := cmpOr(tt.chunkSize, logs.DefaultChunkSize); size > max {
						t.Errorf("chunk %d holds %d bytes of text, over %d", c.GetSequence(), size, max)
					}
				}
				if tt.chunkSize != 0 && len(chunks) < tt.minChunks {
					t.Errorf("%d chunks, want at least %d", len(chunks), tt.minChunks)
				}
			})
		})
	}
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// TestLineText: invalid UTF-8 becomes U+FFFD, a line over 16 KiB is cut
// there (at a character's boundary) and goes on in the next LogLine, an
// empty line is kept, stderr is told apart.
func TestLineText(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, id := newEnv(t, logs.Config{})
		long := strings.Repeat("a", logs.MaxLine-1) + "é" + strings.Repeat("b", 20000) // é straddles the cut
		e.eng.Write(id, engine.LogEntry{Text: []byte("ok \xff\xfe end")})
		e.eng.Write(id, engine.LogEntry{Text: []byte(long)})
		e.eng.Write(id, engine.LogEntry{Text: nil, Stderr: true})
		if err := <-e.start(t, logs.Request{ID: "req-1", Deployment: "web"}); err != nil {
			t.Fatal(err)
		}
		got := e.pub.lines()
		if len(got) != 5 {
			t.Fatalf("got %d lines, want 5: the bad one, the long one in 3 pieces, the empty one", len(got))
		}
		if got[0] != "ok \uFFFD end" {
			t.Errorf("line with invalid UTF-8 = %q, want %q", got[0], "ok \uFFFD end")
		}
		if len(got[1]) != logs.MaxLine-1 || len(got[2]) != logs.MaxLine || !utf8.ValidString(got[1]) || got[1]+got[2]+got[3] != long {
			t.Errorf("long line cut into %d + %d + %d bytes, want %d (before é), %d and the rest", len(got[1]), len(got[2]), len(got[3]), logs.MaxLine-1, logs.MaxLine)
		}
		lines := e.pub.all()[0].GetLines()
		if lines[4].GetStream() != fleetv1.LogLine_STDERR || lines[4].GetText() != "" {
			t.Errorf("last line = %v, want an empty STDERR line", lines[4])
		}
		if !proto.Equal(lines[1].GetTimestamp(), lines[2].GetTimestamp()) {
			t.Errorf("the pieces of one line have timestamps %v and %v, want the line's", lines[1].GetTimestamp(), lines[2].GetTimestamp())
		}
	})
}

// TestRateLimitDropsCounted: lines over the gateway's budget are dropped,
// and the chunks say how many and how many bytes; the budget refills.
func TestRateLimitDropsCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, id := newEnv(t, logs.Config{Rate: 16 << 10, Burst: 16 << 10})
		line := strings.Repeat("x", 1024)
		e.write(id, 64, line[:1020]+"%04d") // 64 KiB at once: a 16 KiB burst's worth pass
		if err := <-e.start(t, logs.Request{ID: "req-1", Deployment: "web", Tail: 64}); err != nil {
			t.Fatal(err)
		}
		pass := (16 << 10) / (1024 + logs.LineOverhead + len("web"))
		var dropped, droppedBytes uint64
		for _, c := range e.pub.all() {
			dropped += c.GetDroppedLines()
			droppedBytes += c.GetDroppedBytes()
		}
		if got := len(e.pub.lines()); got != pass || dropped != uint64(64-pass) || droppedBytes != dropped*1024 {
			t.Errorf("sent %d lines, dropped %d (%d bytes); want %d sent, the rest dropped (1024 bytes each)", got, dropped, droppedBytes, pass)
		}

		// A second later the bucket holds 16 KiB again.
		e.pub = &recorder{}
		time.Sleep(time.Second)
		m2, _ := logs.New(logs.Config{Engine: e.eng, Publisher: e.pub, Gateway: "gw", Rate: 16 << 10, Burst: 16 << 10})
		s, err := m2.Open(t.Context(), logs.Request{ID: "req-1", Deployment: "web", Tail: uint32(pass)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Run(t.Context()); err != nil || len(e.pub.lines()) != pass {
			t.Errorf("after a second: %d lines, %v; want all %d", len(e.pub.lines()), err, pass)
		}
	})
}

// TestEmptyLinesBounded: empty lines cost their overhead, so a flood of
// them is bounded by the chunk size and the rate limit too.
func TestEmptyLinesBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, id := newEnv(t, logs.Config{Rate: 16 << 10, Burst: 16 << 10, ChunkSize: 16 << 10})
		for range 5000 {
			e.eng.Write(id, engine.LogEntry{})
		}
		if err := <-e.start(t, logs.Request{ID: "req-1", Deployment: "web", Tail: 5000}); err != nil {
			t.Fatal(err)
		}
		cost := logs.LineOverhead + len("web")
		var dropped int
		for _, c := range e.pub.all() {
			dropped += int(c.GetDroppedLines())
			if n := len(c.GetLines()); n*cost > 16<<10 {
				t.Errorf("chunk %d holds %d empty lines, over 16 KiB at %d bytes each", c.GetSequence(), n, cost)
			}
		}
		if sent := len(e.pub.lines()); sent != (16<<10)/cost || sent+dropped != 5000 {
			t.Errorf("sent %d, dropped %d empty lines; want %d sent (a 16 KiB burst), the rest dropped", sent, dropped, (16<<10)/cost)
		}
	})
}

// TestRateLimitShared: two streams share the one budget of the gateway.
func TestRateLimitShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, id := newEnv(t, logs.Config{Rate: 16 << 10, Burst: 16 << 10})
		e.write(id, 12, strings.Repeat("y", 1020)+"%04d")
		a := e.start(t, logs.Request{ID: "req-1", Deployment: "web"})
		b := e.start(t, logs.Request{ID: "req-2", Deployment: "web"})
		if err := errors.Join(<-a, <-b); err != nil {
			t.Fatal(err)
		}
		var sent, dropped int
		for _, c := range e.pub.all() {
			sent += len(c.GetLines())
			dropped += int(c.GetDroppedLines())
		}
		pass := (16 << 10) / (1024 + logs.LineOverhead + len("web"))
		if sent != pass || dropped != 24-pass {
			t.Errorf("two streams of 12 lines of 1 KiB under one 16 KiB budget sent %d, dropped %d; want %d and %d", sent, dropped, pass, 24-pass)
		}
	})
}

// TestFollow: new lines come in chunks at least every second; the stream
// ends at until, on cancel, when the container is removed or replaced, or
// at the 10-minute bound; a restart of the container goes on without
// repeating a line.
func TestFollow(t *testing.T) {
	tests := []struct {
		name      string
		until     time.Duration
		end       func(e *env, id string)
		wantEnded fleetv1.LogChunk_End
		wantAfter time.Duration // how long after the start the stream ends
	}{
		{"until", 5 * time.Second, nil, fleetv1.LogChunk_UNTIL, 5 * time.Second},
		{"bounded to 10 minutes", time.Hour, nil, fleetv1.LogChunk_UNTIL, 10 * time.Minute},
		{"canceled", 0, func(e *env, _ string) {
			if !e.m.Cancel(context.Background(), "req-1") {
				panic("Cancel did not find the stream")
			}
		}, fleetv1.LogChunk_CANCELED, 3 * time.Second},
		{"container removed", 0, func(e *env, id string) { e.eng.Remove(context.Background(), id) }, fleetv1.LogChunk_CONTAINER_GONE, 4 * time.Second},
		{"container replaced", 0, func(e *env, id string) {
			ctx := context.Background()
			e.eng.Stop(ctx, id, nil)
			next, _ := e.eng.Create(ctx, "fleet-web-r2", &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "img:1"}, engine.Host{})
			e.eng.Start(ctx, next)
		}, fleetv1.LogChunk_CONTAINER_GONE, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e, id := newEnv(t, logs.Config{})
				e.write(id, 3, "old %d")
				start := time.Now()
				req := logs.Request{ID: "req-1", Deployment: "web", Tail: 2, Follow: true, Received: start}
				if tt.until != 0 {
					req.Until = start.Add(tt.until)
				}
				done := e.start(t, req)
				synctest.Wait()
				time.Sleep(1500 * time.Millisecond)
				if got := e.pub.lines(); len(got) != 2 || got[1] != "old 2" {
					t.Fatalf("after 1.5 s: %q, want the tail (old 1, old 2) flushed within the second", got)
				}
				e.write(id, 2, "new %d")
				time.Sleep(time.Second)
				// A restart: the stream reads again from the line after the last.
				ctx := context.Background()
				e.eng.Stop(ctx, id, nil)
				e.eng.Start(ctx, id)
				e.write(id, 1, "after restart %d")
				time.Sleep(1500 * time.Millisecond)
				if tt.end != nil {
					tt.end(e, id)
				}
				if err := <-done; err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				if took := time.Since(start); took > tt.wantAfter+2*time.Second || took < tt.wantAfter-2*time.Second && tt.end == nil {
					t.Errorf("ended after %v, want about %v", took, tt.wantAfter)
				}
				want := []string{"old 1", "old 2", "new 0", "new 1", "after restart 0"}
				if got := e.pub.lines(); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("lines %q, want %q", got, want)
				}
				if last := e.pub.last(t); last.GetEnded() != tt.wantEnded {
					t.Errorf("ended %v (%s), want %v", last.GetEnded(), last.GetMessage(), tt.wantEnded)
				}
				if e.m.Cancel(context.Background(), "req-1") {
					t.Error("Cancel after the end found the stream")
				}
			})
		})
	}
}

// TestShutdownEndsWithError: the agent stopping ends a follow with a final
// chunk ended ERROR, and Run returns ErrStopped (not a context error: the
// command is answered FAILED, not left to resume).
func TestShutdownEndsWithError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, _ := newEnv(t, logs.Config{})
		ctx, cancel := context.WithCancel(t.Context())
		s, err := e.m.Open(ctx, logs.Request{ID: "req-1", Deployment: "web", Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		synctest.Wait()
		cancel()
		if err := <-done; !errors.Is(err, logs.ErrStopped) || errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want ErrStopped", err)
		}
		if last := e.pub.last(t); last.GetEnded() != fleetv1.LogChunk_ERROR || last.GetMessage() == "" {
			t.Errorf("final chunk %v, want ended ERROR with a message", last)
		}
	})
}

// TestServices: a deployment of several services streams every one,
// each line naming its service; a service asked streams only its own.
func TestServices(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, web := newEnv(t, logs.Config{})
		api := e.run(t, "fleet-web-api-r1", "web", 1) // a second container of the deployment
		e.eng.SetService(web, "front")
		e.eng.SetService(api, "api")
		e.write(web, 2, "front %d")
		e.write(api, 3, "api %d")
		if err := <-e.start(t, logs.Request{ID: "req-1", Deployment: "web"}); err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		for _, c := range e.pub.all() {
			for _, l := range c.GetLines() {
				if !strings.HasPrefix(l.GetText(), l.GetService()) {
					t.Errorf("line %q names service %q", l.GetText(), l.GetService())
				}
				count[l.GetService()]++
			}
		}
		if count["front"] != 2 || count["api"] != 3 {
			t.Errorf("lines per service %v, want front 2, api 3", count)
		}

		e.pub = &recorder{}
		m, _ := logs.New(logs.Config{Engine: e.eng, Publisher: e.pub, Gateway: "gw"})
		s, err := m.Open(t.Context(), logs.Request{ID: "req-1", Deployment: "web", Service: "api"})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Run(t.Context()); err != nil || len(e.pub.lines()) != 3 {
			t.Errorf("service api: %q, %v; want its 3 lines", e.pub.lines(), err)
		}
	})
}

// TestOpenRefusals: bad input names its field; an unknown deployment or
// service is NOT_FOUND; a stream over the bound is POLICY_DENIED.
func TestOpenRefusals(t *testing.T) {
	tests := []struct {
		name      string
		req       logs.Request
		wantKind  error
		wantField string
	}{
		{"id not a topic level", logs.Request{ID: "a/b", Deployment: "web"}, errdefs.ErrInvalidArgument, "id"},
		{"id with a wildcard", logs.Request{ID: "a+", Deployment: "web"}, errdefs.ErrInvalidArgument, "id"},
		{"id too long", logs.Request{ID: strings.Repeat("a", 65), Deployment: "web"}, errdefs.ErrInvalidArgument, "id"},
		{"no deployment", logs.Request{ID: "r"}, errdefs.ErrInvalidArgument, "deployment"},
		{"unknown deployment", logs.Request{ID: "r", Deployment: "db"}, errdefs.ErrNotFound, "deployment"},
		{"unknown service", logs.Request{ID: "r", Deployment: "web", Service: "db"}, errdefs.ErrNotFound, "service"},
		{"until without follow", logs.Request{ID: "r", Deployment: "web", Until: time.Now()}, errdefs.ErrInvalidArgument, "until"},
		{"fifth stream", logs.Request{ID: "r", Deployment: "web", Follow: true}, errdefs.ErrPolicyDenied, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e, _ := newEnv(t, logs.Config{})
				if tt.wantKind == errdefs.ErrPolicyDenied {
					for i := range logs.DefaultMaxStreams {
						e.start(t, logs.Request{ID: fmt.Sprint("f", i), Deployment: "web", Follow: true})
					}
				}
				_, err := e.m.Open(t.Context(), tt.req)
				if !errors.Is(err, tt.wantKind) || errdefs.Field(err) != tt.wantField {
					t.Errorf("Open = %v (field %q), want %v on %q", err, errdefs.Field(err), tt.wantKind, tt.wantField)
				}
			})
		})
	}
}

// TestEnded: the lone final chunk of a stream a restart cut.
func TestEnded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, _ := newEnv(t, logs.Config{})
		if err := e.m.Ended(t.Context(), "req-1", logs.ErrStopped); err != nil {
			t.Fatal(err)
		}
		if c := e.pub.last(t); c.GetEnded() != fleetv1.LogChunk_ERROR || c.GetCode() != fleetv1.Reply_INTERNAL || c.GetMessage() != logs.ErrStopped.Error() {
			t.Errorf("chunk %v, want final, ERROR, INTERNAL, the message", c)
		}
	})
}

// gated is a Publisher whose first publication waits for release.
type gated struct {
	recorder
	release chan struct{}
	first   bool
}

func (g *gated) PublishChunk(ctx context.Context, c *fleetv1.LogChunk) error {
	if !g.first {
		g.first = true
		select {
		case <-g.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.recorder.PublishChunk(ctx, c)
}

// TestCancelDoesNotCutAPublication: a cancel that comes while a chunk is
// being published waits for it; the final chunk takes the next sequence.
// (A cut publication may still reach the broker: the final chunk would
// repeat its sequence.)
func TestCancelDoesNotCutAPublication(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, id := newEnv(t, logs.Config{})
		pub := &gated{release: make(chan struct{})}
		m, err := logs.New(logs.Config{Engine: e.eng, Publisher: pub, Gateway: "gw"})
		if err != nil {
			t.Fatal(err)
		}
		e.write(id, 3, "line %d")
		s, err := m.Open(t.Context(), logs.Request{ID: "req-1", Deployment: "web", Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(t.Context()) }()
		time.Sleep(2 * time.Second) // the first chunk is being published
		canceled := make(chan bool)
		go func() { canceled <- m.Cancel(context.Background(), "req-1") }()
		synctest.Wait()
		close(pub.release)
		if !<-canceled {
			t.Error("Cancel did not find the stream")
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if last := pub.last(t); last.GetEnded() != fleetv1.LogChunk_CANCELED || last.GetSequence() != 1 || len(pub.lines()) != 3 {
			t.Errorf("final chunk %v, lines %q; want sequence 1 CANCELED after the 3 lines", last, pub.lines())
		}
	})
}
