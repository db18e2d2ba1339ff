package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// ErrGatewayOffline refuses a request that needs the gateway online now
// (logs): the API answers 409.
var ErrGatewayOffline = errors.New("gateway offline")

// logsLink is what a logs stream needs of the transport: a subscription
// to one stream's chunks on this replica alone, and sending one command
// to one gateway (recorded, with the given id).
type logsLink interface {
	SubscribeLogs(ctx context.Context, tenant, gateway, requestID string) (unsubscribe func(context.Context) error, err error)
	SendOne(ctx context.Context, tenant, gateway string, cmd *fleetv1.Command, expiresIn time.Duration) error
}

// logTimings bound a stream whose gateway stays silent.
type logTimings struct {
	// accept is how long the gateway may take to accept the command.
	accept time.Duration
	// grace is how long the final chunk may come after a SUCCEEDED reply.
	grace time.Duration
	// slack is how long after its end (the follow's until, bound at
	// most) a stream the gateway did not end is given up.
	slack time.Duration
	// bound is the longest follow (the agent's 10 minutes).
	bound time.Duration
	// online is how often the gateway is checked to be online still.
	online time.Duration
}

var defaultLogTimings = logTimings{accept: 30 * time.Second, grace: 2 * time.Second, slack: 30 * time.Second, bound: 10 * time.Minute,
	online: 2 * time.Second}

// EndOffline is LogEnd.Reason when the gateway went offline.
const EndOffline = "GATEWAY_OFFLINE"

// logStreams are the logs streams this replica serves, by command id.
type logStreams struct {
	link logsLink
	// online tells whether a gateway is online, in the inventory every
	// replica shares (whichever applied its death).
	online func(tenant, gateway string) bool
	log    *slog.Logger
	now    func() time.Time
	tm     logTimings

	mu   sync.Mutex
	open map[string]*LogStream // guarded by mu
}

func newLogStreams(link logsLink, online func(tenant, gateway string) bool, log *slog.Logger, now func() time.Time) *logStreams {
	return &logStreams{link: link, online: online, log: log, now: now, tm: defaultLogTimings, open: map[string]*LogStream{}}
}

// LogStream is a logs request in flight: Next yields its events in
// sequence order, Close ends it (and cancels a follow on the gateway).
type LogStream struct {
	// ID is the logs command's id.
	ID              string
	tenant, gateway string
	follow          bool
	*logOrder
	owner       *logStreams
	unsubscribe func(context.Context) error
	accepted    chan struct{} // closed by the first reply
	sent        bool          // the logs command was published; set before the stream is returned
	closeOnce   sync.Once

	tmu    sync.Mutex
	timers []*time.Timer // guarded by tmu
}

// start subscribes to the stream's chunks, then sends the logs command:
// no chunk can come before the subscription. The caller closes the stream.
func (ls *logStreams) start(ctx context.Context, req LogsRequest, id string) (*LogStream, error) {
	s := &LogStream{ID: id, tenant: req.Tenant, gateway: req.Gateway, follow: req.Follow, logOrder: newLogOrder(),
		owner: ls, accepted: make(chan struct{})}
	ls.mu.Lock()
	ls.open[id] = s
	ls.mu.Unlock()
	unsub, err := ls.link.SubscribeLogs(ctx, req.Tenant, req.Gateway, id)
	if err != nil {
		ls.remove(id)
		return nil, err
	}
	s.unsubscribe = unsub
	now := ls.now()
	if err := ls.link.SendOne(ctx, req.Tenant, req.Gateway, logsCommand(req, id), ls.tm.accept); err != nil {
		s.Close()
		return nil, err
	}
	s.sent = true
	s.after(ls.tm.accept, func() {
		select {
		case <-s.accepted:
		default:
			s.finish(&LogEnd{Reason: EndTimeout, Message: fmt.Sprintf("gateway %s/%s did not accept the logs command within %s", req.Tenant, req.Gateway, ls.tm.accept)}, false)
		}
	})
	// A follow ends at its until, 10 minutes at most; a tail is given as
	// long (the agent's rate limit paces a large one).
	until := now.Add(ls.tm.bound)
	if req.Follow && !req.Until.IsZero() && req.Until.Before(until) {
		until = req.Until
	}
	s.after(until.Add(ls.tm.slack).Sub(now), func() {
		s.finish(&LogEnd{Reason: EndTimeout, Message: fmt.Sprintf("gateway %s/%s did not end the stream in time", req.Tenant, req.Gateway)}, false)
	})
	s.watchOnline()
	return s, nil
}

// watchOnline ends the stream when its gateway goes offline: it would
// send nothing more (a follow is canceled, queued for its next session).
func (s *LogStream) watchOnline() {
	ls := s.owner
	s.after(ls.tm.online, func() {
		if ls.online(s.tenant, s.gateway) {
			s.watchOnline()
			return
		}
		s.finish(&LogEnd{Reason: EndOffline, Message: fmt.Sprintf("gateway %s/%s went offline", s.tenant, s.gateway)}, false)
	})
}

func logsCommand(req LogsRequest, id string) *fleetv1.Command {
	l := &fleetv1.Logs{Deployment: req.Deployment, Service: req.Service, Tail: req.Tail, Follow: req.Follow}
	if !req.Since.IsZero() {
		l.Since = timestamppb.New(req.Since)
	}
	if !req.Until.IsZero() {
		l.Until = timestamppb.New(req.Until)
	}
	return &fleetv1.Command{Id: id, Body: &fleetv1.Command_Logs{Logs: l}}
}

// after runs f after d unless the stream is closed first.
func (s *LogStream) after(d time.Duration, f func()) {
	s.tmu.Lock()
	s.timers = append(s.timers, time.AfterFunc(d, f))
	s.tmu.Unlock()
}

func (ls *logStreams) get(tenant, gateway, id string) *LogStream {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	s := ls.open[id]
	if s == nil || s.tenant != tenant || s.gateway != gateway {
		return nil
	}
	return s
}

func (ls *logStreams) remove(id string) {
	ls.mu.Lock()
	delete(ls.open, id)
	ls.mu.Unlock()
}

// chunk routes a chunk received on t to its stream; one for no stream
// of this replica's (over already, or another's) is dropped.
func (ls *logStreams) chunk(t topic.Topic, c *fleetv1.LogChunk) {
	if s := ls.get(t.Tenant, t.Gateway, t.Request); s != nil {
		s.chunk(c)
	}
}

// reply routes a reply to a logs command of this replica's: ACCEPTED
// starts the wait for chunks; SUCCEEDED ends the stream after a grace for
// its final chunk; any other final result ends it at once.
func (ls *logStreams) reply(tenant, gateway string, rep *fleetv1.Reply) {
	s := ls.get(tenant, gateway, rep.GetCommandId())
	if s == nil {
		return
	}
	end := &LogEnd{Reason: rep.GetResult().String(), Message: rep.GetMessage()}
	if rep.GetCode() != fleetv1.Reply_OK {
		end.Code = rep.GetCode().String()
	}
	switch rep.GetResult() {
	case fleetv1.Reply_ACCEPTED:
		s.acceptOnce()
	case fleetv1.Reply_SUCCEEDED:
		s.acceptOnce()
		s.after(ls.tm.grace, func() { s.finish(end, true) })
	default:
		s.acceptOnce()
		s.finish(end, true)
	}
}

func (s *LogStream) acceptOnce() {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	select {
	case <-s.accepted:
	default:
		close(s.accepted)
	}
}

// Close ends the stream: no more events come. A follow the gateway has
// not ended is canceled there (cancel-logs); the subscription ends.
func (s *LogStream) Close() {
	s.closeOnce.Do(func() {
		s.tmu.Lock()
		for _, t := range s.timers {
			t.Stop()
		}
		s.tmu.Unlock()
		ls := s.owner
		ls.remove(s.ID)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s.sent && s.follow && !s.endedByGateway() {
			cmd := &fleetv1.Command{Id: dispatch.NewID("c"), Body: &fleetv1.Command_CancelLogs{CancelLogs: &fleetv1.CancelLogs{RequestId: s.ID}}}
			if err := ls.link.SendOne(ctx, s.tenant, s.gateway, cmd, ls.tm.accept); err != nil {
				ls.log.Warn("logs: cancel-logs not sent; the gateway ends the follow at its until", "tenant", s.tenant, "gateway", s.gateway, "command_id", s.ID, "err", err)
			}
		}
		s.finish(&LogEnd{Reason: "CLOSED"}, false)
		if s.unsubscribe != nil {
			if err := s.unsubscribe(ctx); err != nil {
				ls.log.Warn("logs: unsubscribe", "command_id", s.ID, "err", err)
			}
		}
	})
}

// Logs asks one gateway for a deployment's output and returns the stream
// of its lines: subscribed to (on this replica alone: the chunks come to
// the replica that asked, with shared ingest as with --solo-ingest)
// before the logs command is sent. The caller must Close it; closing a
// follow before its end cancels it on the gateway.
func (c *Controller) Logs(ctx context.Context, req LogsRequest) (*LogStream, error) {
	if err := checkLogsRequest(req, c.cfg.Now()); err != nil {
		return nil, err
	}
	g, ok := c.inv.Get(req.Tenant, req.Gateway)
	if !ok {
		return nil, &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("gateway %s/%s is not in the inventory", req.Tenant, req.Gateway)}
	}
	if !g.Online {
		return nil, fmt.Errorf("gateway %s/%s is offline: its logs can be read once it is back online: %w", req.Tenant, req.Gateway, ErrGatewayOffline)
	}
	if c.con == nil {
		return nil, errors.New("controller: not connected to the broker")
	}
	return c.logs.start(ctx, req, dispatch.NewID("c"))
}

// checkLogsRequest checks what the API and the agent would refuse.
func checkLogsRequest(req LogsRequest, now time.Time) error {
	if err := topic.CheckID("tenant", req.Tenant); err != nil {
		return errdefs.Invalid("tenant", "%v", err)
	}
	if err := topic.CheckGatewayID(req.Gateway); err != nil {
		return errdefs.Invalid("id", "%v", err)
	}
	if err := topic.CheckDeploymentName(req.Deployment); err != nil {
		return errdefs.Invalid("name", "%v", err)
	}
	if req.Service != "" {
		if err := topic.CheckDeploymentName(req.Service); err != nil {
			return errdefs.Invalid("service", "%v", err)
		}
	}
	if !req.Until.IsZero() {
		if !req.Follow {
			return errdefs.Invalid("until", "applies to a follow only: add follow=true, or leave until out")
		}
		if !req.Until.After(now) {
			return errdefs.Invalid("until", "%s is not in the future: give a later instant, or a duration like 5m", req.Until.Format(time.RFC3339))
		}
	}
	return nil
}

// controllerLogsLink is the controller's transport for logs streams: its MQTT
// client and its dispatcher.
type controllerLogsLink struct{ c *Controller }

func (l controllerLogsLink) SubscribeLogs(ctx context.Context, tenant, gateway, requestID string) (func(context.Context) error, error) {
	return l.c.con.SubscribeLogs(ctx, tenant, gateway, requestID)
}

// SendOne records cmd as a batch of one and publishes it; a command the
// broker did not take is an error.
func (l controllerLogsLink) SendOne(ctx context.Context, tenant, gateway string, cmd *fleetv1.Command, expiresIn time.Duration) error {
	c := l.c
	g, _ := c.inv.Get(tenant, gateway)
	online := g != nil && g.Online
	b := &dispatch.Batch{ID: dispatch.NewID("b"), Verb: string(topic.VerbOf(cmd)), Tenant: tenant, CreatedAt: c.cfg.Now()}
	jobs := []dispatch.Job{dispatch.NewJobID(b, cmd.GetId(), tenant, gateway, online, cmd, expiresIn)}
	if err := c.disp.Record(ctx, b, jobs); err != nil {
		return err
	}
	sent := false
	c.disp.Publish(ctx, jobs, func(dispatch.Job) { sent = true })
	if !sent {
		cmd, _ := c.disp.Command(cmd.GetId())
		msg := "not published"
		if cmd != nil && cmd.Message != "" {
			msg = cmd.Message
		}
		return fmt.Errorf("logs: %s to %s/%s: %s", topic.VerbOf(jobs[0].Body), tenant, gateway, msg)
	}
	return nil
}
