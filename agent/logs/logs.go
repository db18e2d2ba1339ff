// Package logs streams containers' output as the logs verb asks: it finds a
// deployment's containers, reads their lines from the engine, and publishes
// them in LogChunk messages through a Publisher that knows the transport
// (the gateway's MQTT link); this package knows nothing of MQTT.
//
// A Manager bounds the streams that run at once and shares one rate limit
// (bytes per second, with a burst) among them: a line over the budget is
// dropped and counted in the next chunk. Each stream publishes its chunks
// in order, sequence from 0, at most ChunkSize bytes of text each and at
// least every FlushInterval while lines come, and ends with one final chunk
// saying why (COMPLETE, UNTIL, CANCELED, CONTAINER_GONE or ERROR).
package logs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Defaults of Config.
const (
	DefaultRate          = 16 << 10 // bytes per second, across streams
	DefaultBurst         = 64 << 10
	DefaultChunkSize     = 64 << 10
	DefaultMaxStreams    = 4
	DefaultMaxFollow     = 10 * time.Minute
	DefaultFlushInterval = time.Second
	DefaultPollInterval  = time.Second
	// DefaultTail is the tail of a request with neither tail nor since.
	DefaultTail = 100
	// MaxLine is the most text of one LogLine: a longer line is cut there
	// and goes on in the next LogLine.
	MaxLine = 16 << 10
	// LineOverhead is what a LogLine costs besides its text and service
	// name (timestamp, stream, framing), counted against the chunk size and
	// the rate limit, so that a flood of empty lines is bounded too.
	LineOverhead = 32
	// MaxChunkSize bounds ChunkSize: JSON writes a control character in
	// 6 bytes, and a chunk must stay under the brokers' 1 MiB packets.
	MaxChunkSize = 128 << 10
	// finalTimeout bounds the publication of a final chunk once the
	// stream has stopped (cancel, until, shutdown).
	finalTimeout = 10 * time.Second
)

// Engine is what a stream reads (engine.Docker, engine.FakeLogs).
type Engine interface {
	LogSources(ctx context.Context, deployment string) ([]engine.LogSource, error)
	ContainerLogs(ctx context.Context, id string, o engine.LogOptions, emit func(engine.LogEntry) error) error
}

// Publisher sends one chunk of the stream c.RequestId, at least once, in
// the order of the calls; it returns once the chunk is delivered or ctx
// ends.
type Publisher interface {
	PublishChunk(ctx context.Context, c *fleetv1.LogChunk) error
}

// Config configures a Manager.
type Config struct {
	Engine    Engine
	Publisher Publisher
	Gateway   string // the chunks' gateway_id
	// Rate is the bytes of line text per second all streams together may
	// send (0: DefaultRate; negative: unlimited); Burst the most at once
	// (at least MaxLine).
	Rate  int64
	Burst int64
	// ChunkSize bounds a chunk's text (at least MaxLine).
	ChunkSize     int
	MaxStreams    int
	MaxFollow     time.Duration // a follow's bound after its receipt
	FlushInterval time.Duration
	// PollInterval is how often a follow whose container stopped looks
	// whether it runs again, or was removed or replaced.
	PollInterval time.Duration
	Now          func() time.Time
	Logger       *slog.Logger
}

// Request is one logs command.
type Request struct {
	ID         string // the command id, the topic level of the chunks
	Deployment string
	Service    string // "": every service of the deployment
	Tail       uint32
	Since      time.Time
	Follow     bool
	Until      time.Time
	Received   time.Time // when the command was taken: the follow bound counts from it
}

// Manager runs the logs streams of one gateway.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	limit *bucket

	mu      sync.Mutex         // guards streams
	streams map[string]*Stream // by request id, from Open until Run ends
}

// New returns a Manager; zero settings take their defaults.
func New(cfg Config) (*Manager, error) {
	if cfg.Engine == nil || cfg.Publisher == nil {
		return nil, errors.New("logs: Engine and Publisher are required")
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Burst < MaxLine {
		return nil, fmt.Errorf("logs: burst %d is under a line's most (%d bytes): such a line could never be sent", cfg.Burst, MaxLine)
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.ChunkSize < MaxLine || cfg.ChunkSize > MaxChunkSize {
		return nil, fmt.Errorf("logs: chunk size %d is not between a line's most (%d bytes) and %d", cfg.ChunkSize, MaxLine, MaxChunkSize)
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxFollow <= 0 {
		cfg.MaxFollow = DefaultMaxFollow
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, log: cfg.Logger, limit: newBucket(cfg.Rate, cfg.Burst, cfg.Now), streams: map[string]*Stream{}}, nil
}

// Errors of a stream's end, for its final chunk and reply.
var (
	errCanceled = errors.New("canceled by cancel-logs")
	errUntil    = errors.New("reached until")
	// ErrStopped ends a stream the agent's shutdown or restart cut: streams
	// are not resumed.
	ErrStopped = errors.New("the agent stopped (or restarted) while this logs stream ran, and streams are not resumed: send logs again")
)

// Open checks req and finds its containers: INVALID_ARGUMENT naming the
// field (deployment, service, until), NOT_FOUND naming deployment or
// service, POLICY_DENIED when MaxStreams run already. The stream is
// reserved (counted, and Cancel finds it) until its Run ends: a caller
// must Run it.
func (m *Manager) Open(ctx context.Context, req Request) (*Stream, error) {
	if err := topic.CheckID("command id", req.ID); err != nil {
		return nil, errdefs.Invalid("id", "%v: a logs command's id is a level of its chunks' topic", err)
	}
	if err := topic.CheckDeploymentName(req.Deployment); err != nil {
		return nil, errdefs.Invalid("deployment", "%v", err)
	}
	if !req.Until.IsZero() && !req.Follow {
		return nil, errdefs.Invalid("until", "applies to follow only; set follow, or leave until out")
	}
	sources, err := m.sources(ctx, req.Deployment, req.Service)
	if err != nil {
		return nil, err
	}
	if req.Received.IsZero() {
		req.Received = m.cfg.Now()
	}
	s := &Stream{m: m, req: req, sources: sources, done: make(chan struct{})}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.streams) >= m.cfg.MaxStreams {
		ids := slices.Sorted(maps.Keys(m.streams))
		return nil, fmt.Errorf("%w: this gateway runs at most %d logs streams at once and %d run (%s): end one with cancel-logs, or wait for one to end",
			errdefs.ErrPolicyDenied, m.cfg.MaxStreams, len(ids), strings.Join(ids, ", "))
	}
	if _, dup := m.streams[req.ID]; dup {
		return nil, errdefs.Invalid("id", "a logs stream with id %q runs already", req.ID)
	}
	m.streams[req.ID] = s
	return s, nil
}

// sources are the containers of deployment (of service, if set).
func (m *Manager) sources(ctx context.Context, deployment, service string) ([]engine.LogSource, error) {
	all, err := m.cfg.Engine.LogSources(ctx, deployment)
	if err != nil {
		return nil, fmt.Errorf("list the containers of deployment %s: %w", deployment, err)
	}
	if len(all) == 0 {
		return nil, &errdefs.FieldError{Field: "deployment", Kind: errdefs.ErrNotFound,
			Msg: fmt.Sprintf("deployment %q has no container on this gateway; check the name (the gateway's birth lists its deployments)", deployment)}
	}
	if service == "" {
		return all, nil
	}
	var names []string
	for _, s := range all {
		if s.Service == service {
			return []engine.LogSource{s}, nil
		}
		names = append(names, s.Service)
	}
	return nil, &errdefs.FieldError{Field: "service", Kind: errdefs.ErrNotFound,
		Msg: fmt.Sprintf("deployment %q has no service %q; its services: %s", deployment, service, strings.Join(names, ", "))}
}

// Cancel ends the stream id with CANCELED and waits (bounded by ctx) until
// its final chunk is published. It reports whether such a stream ran.
func (m *Manager) Cancel(ctx context.Context, id string) bool {
	m.mu.Lock()
	s, ok := m.streams[id]
	m.mu.Unlock()
	if !ok {
		return false
	}
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
	}
	return true
}

// Ended publishes the lone final chunk of stream id, ended ERROR with err:
// the agent restarted while it ran and does not know how far it got, so
// the chunk's sequence is 0.
func (m *Manager) Ended(ctx context.Context, id string, err error) error {
	c := &fleetv1.LogChunk{RequestId: id, GatewayId: m.cfg.Gateway, Final: true, Ended: fleetv1.LogChunk_ERROR,
		Code: errdefs.Code(err), Message: err.Error()}
	ctx, cancel := context.WithTimeout(ctx, finalTimeout)
	defer cancel()
	return m.cfg.Publisher.PublishChunk(ctx, c)
}

func (m *Manager) release(s *Stream) {
	m.mu.Lock()
	if m.streams[s.req.ID] == s {
		delete(m.streams, s.req.ID)
	}
	m.mu.Unlock()
}
