package gateway

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/handlers"
	"github.com/fleet-agent/fleet/agent/logs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// LogsConfig configures the logs verbs (agent/logs); zero values take the
// package's defaults.
type LogsConfig struct {
	// Rate is bytes of line text per second across the gateway's streams
	// (0: logs.DefaultRate; negative: unlimited); Burst the most at once.
	Rate  int64
	Burst int64
	// ChunkSize bounds a chunk's text.
	ChunkSize int
	// MaxStreams bounds the streams that run at once.
	MaxStreams int
}

// addLogs adds the logs and cancel-logs handlers to verbs when the engine
// can read containers' output (engine.Docker, engine.FakeLogs).
func (g *Gateway) addLogs(verbs map[topic.Verb]command.Handler) error {
	eng, ok := g.cfg.Engine.(logs.Engine)
	if !ok {
		return nil
	}
	lc := g.cfg.Logs
	m, err := logs.New(logs.Config{Engine: eng, Publisher: chunkPublisher{g}, Gateway: g.cfg.ID,
		Rate: lc.Rate, Burst: lc.Burst, ChunkSize: lc.ChunkSize, MaxStreams: lc.MaxStreams,
		Now: g.cfg.Now, Logger: g.cfg.Logger.With("component", "logs")})
	if err != nil {
		return err
	}
	unfinished, err := g.store.Unfinished()
	if err != nil {
		return fmt.Errorf("read command journal: %w", err)
	}
	cut := map[string]bool{}
	for _, c := range unfinished {
		if c.Verb == string(topic.Logs) {
			cut[c.ID] = true
		}
	}
	hs, err := handlers.NewLogs(handlers.LogsConfig{Logs: m, Journal: g.store, Cut: cut,
		Logger: g.cfg.Logger.With("component", "logs")})
	if err != nil {
		return err
	}
	maps.Copy(verbs, hs)
	return nil
}

// chunkPublisher publishes a stream's chunks, QoS 1 and not retained, on
// .../{gateway}/logs/{request id}, in the agent's payload encoding.
type chunkPublisher struct{ g *Gateway }

func (p chunkPublisher) PublishChunk(ctx context.Context, c *fleetv1.LogChunk) error {
	if c.GetRequestId() == "" {
		return errors.New("a log chunk without its request id")
	}
	t := p.g.cfg.Scheme.LogStream(p.g.cfg.Tenant, p.g.cfg.ID, c.GetRequestId())
	m, err := p.g.message(t, c, false)
	if err != nil {
		return err
	}
	return publisher(p).Publish(ctx, m)
}
