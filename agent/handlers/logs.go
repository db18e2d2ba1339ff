package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/logs"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// LogStreams is what the logs verbs call (logs.Manager).
type LogStreams interface {
	Open(ctx context.Context, req logs.Request) (*logs.Stream, error)
	Cancel(ctx context.Context, id string) bool
	Ended(ctx context.Context, id string, err error) error
}

// Journal tells the commands the gateway took (store.Store).
type Journal interface {
	Get(id string) (store.Command, bool, error)
}

// LogsConfig configures the logs verbs.
type LogsConfig struct {
	Logs    LogStreams
	Journal Journal
	// Cut are the ids of the logs commands the journal held unfinished
	// when the agent started: a restart cut them, and they are not
	// resumed.
	Cut    map[string]bool
	Logger *slog.Logger
}

// cancelWait bounds how long cancel-logs waits for the stream's final chunk.
const cancelWait = 15 * time.Second

// NewLogs returns the handlers of logs and cancel-logs.
func NewLogs(cfg LogsConfig) (map[topic.Verb]command.Handler, error) {
	if cfg.Logs == nil || cfg.Journal == nil {
		return nil, errors.New("handlers: Logs and Journal are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := logsHandlers{cfg}
	return map[topic.Verb]command.Handler{topic.Logs: h.logs, topic.CancelLogs: h.cancelLogs}, nil
}

type logsHandlers struct{ cfg LogsConfig }

// logs opens the stream (refusing a bad id, an unknown deployment or
// service, one stream too many), answers ACCEPTED and runs it detached; its
// final reply follows its final chunk. A logs command taken before the
// agent restarted is answered FAILED, after a lone final chunk ended ERROR.
func (h logsHandlers) logs(ctx context.Context, x *command.Exec) error {
	id, body := x.Command.GetId(), x.Command.GetLogs()
	if err := topic.CheckID("command id", id); err != nil {
		return errdefs.Invalid("id", "%v: a logs command's id is a level of its chunks' topic", err)
	}
	if h.cfg.Cut[id] {
		if err := h.cfg.Logs.Ended(ctx, id, logs.ErrStopped); err != nil {
			h.cfg.Logger.Warn("final chunk of a logs stream cut by a restart not delivered", "request_id", id, "err", err)
		}
		return logs.ErrStopped
	}
	req := logs.Request{ID: id, Deployment: body.GetDeployment(), Service: body.GetService(), Tail: body.GetTail(),
		Follow: body.GetFollow()}
	if rec, found, err := h.cfg.Journal.Get(id); err == nil && found {
		req.Received = rec.ReceivedAt
	}
	if body.GetSince() != nil {
		req.Since = body.GetSince().AsTime()
	}
	if body.GetUntil() != nil {
		req.Until = body.GetUntil().AsTime()
	}
	s, err := h.cfg.Logs.Open(ctx, req)
	if err != nil {
		if fe, ok := errors.AsType[*errdefs.FieldError](err); ok && fe.Field != "id" {
			fe.Field = "logs." + fe.Field
		}
		if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrPolicyDenied) {
			return command.Refuse(err)
		}
		return err
	}
	finish := x.Detach()
	go func() { finish(s.Run(ctx)) }()
	return nil
}

// cancelLogs ends a running stream (its final chunk says CANCELED) and
// waits for its final chunk. SUCCEEDED also for a logs command that has
// ended; NOT_FOUND (REJECTED) for an id the journal does not hold as a logs
// command.
func (h logsHandlers) cancelLogs(ctx context.Context, x *command.Exec) error {
	id := x.Command.GetCancelLogs().GetRequestId()
	if id == "" {
		return errdefs.Invalid("cancelLogs.requestId", "is required: the id of the logs command to end")
	}
	wctx, cancel := context.WithTimeout(ctx, cancelWait)
	defer cancel()
	if h.cfg.Logs.Cancel(wctx, id) {
		return nil
	}
	rec, found, err := h.cfg.Journal.Get(id)
	if err != nil {
		return fmt.Errorf("read the command journal: %w", err)
	}
	if !found || rec.Verb != string(topic.Logs) {
		return command.Refuse(&errdefs.FieldError{Field: "cancelLogs.requestId", Kind: errdefs.ErrNotFound,
			Msg: fmt.Sprintf("this gateway has no logs command %q (it remembers the last 10,000 commands or 7 days); give the id of a logs command sent to it", id)})
	}
	return nil
}
