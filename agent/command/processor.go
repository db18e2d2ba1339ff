// Package command takes commands from the agent's command topics, checks
// them, executes each once, and answers them.
//
// Intake is synchronous and durable: by the time a command is acknowledged
// to the broker it has been checked and, if accepted, written to the
// journal. Execution is asynchronous and in order of arrival, by one
// worker; handlers of long work (a deployment) record what they must and
// return, leaving the rest to their own machinery. Final replies stay in the
// journal until the broker has acknowledged them, and are sent again after
// a reconnect otherwise.
package command

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
	"unicode"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// DefaultMaxPayload is the largest command payload accepted by default.
const DefaultMaxPayload = 256 << 10

// Defaults for signed commands: how old a command's issuedAt may be (long
// enough for commands queued by the broker while a gateway was offline),
// and how far in the future (clock skew).
const (
	DefaultMaxAge  = 24 * time.Hour
	DefaultMaxSkew = 5 * time.Minute
)

// Journal is the part of the state store the processor uses.
type Journal interface {
	Begin(store.Command) (store.Command, bool, error)
	Finish(id string, reply []byte) error
	MarkDelivered(id string) error
	Unfinished() ([]store.Command, error)
	Undelivered() ([]store.Command, error)
	// KeepAtLeast makes the journal remember every id for at least d.
	KeepAtLeast(d time.Duration)
}

// Publisher sends messages to the broker.
type Publisher interface {
	Publish(ctx context.Context, m mqttlink.Message) error
}

// Exec is one execution of a command, handed to its Handler.
type Exec struct {
	Command *fleetv1.Command
	// Reply is the final reply under construction: a handler may set its
	// details (status, registry check). Result, code and message are set
	// from the handler's error.
	Reply    *fleetv1.Reply
	accept   func()
	detach   func() func(error)
	detached bool
}

// Accept publishes an ACCEPTED reply at once; a final reply follows when
// the handler returns. Calls after the first do nothing.
func (x *Exec) Accept() { x.accept() }

// Detach publishes ACCEPTED and lets the handler return while the work goes
// on elsewhere, so that the executor takes the next command. The command
// stays unfinished in the journal (and is resumed after a restart, so the
// handler must be idempotent) until the returned function is called with the
// outcome; the handler must not touch Reply after calling it.
func (x *Exec) Detach() (finish func(error)) {
	x.Accept()
	x.detached = true
	return x.detach()
}

// Handler executes one verb. A nil error is SUCCEEDED; an error of kind
// invalid argument, policy denied, stale revision, unsupported or expired
// is REJECTED; any other is FAILED. The error's text is the reply's message.
type Handler func(ctx context.Context, x *Exec) error

// Config configures a Processor.
type Config struct {
	Scheme     topic.Scheme
	Tenant     string
	Gateway    string
	Journal    Journal
	Publisher  Publisher
	Handlers   map[topic.Verb]Handler
	MaxPayload int // DefaultMaxPayload when 0
	// Encoding of the processor's own events.
	Encoding codec.Encoding
	// Cipher, if set, encrypts command payloads in the journal (they may
	// carry credentials).
	Cipher interface {
		Encrypt([]byte) []byte
		Decrypt([]byte) ([]byte, error)
	}
	// Verifier, when set, accepts only commands signed by one of its keys
	// (package cmdsig) and issued within MaxAge before now and MaxSkew
	// after, and makes the journal keep ids for MaxAge+MaxSkew, so that no
	// signed command runs twice. Nil accepts unsigned commands from anyone
	// who can publish on the command topics: insecure.
	Verifier *cmdsig.Verifier
	MaxAge   time.Duration // DefaultMaxAge when 0
	MaxSkew  time.Duration // DefaultMaxSkew when 0
	Now      func() time.Time
	Logger   *slog.Logger
}

// Processor is the command intake and executor.
type Processor struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	queue []job
	wake  chan struct{}

	sends sync.WaitGroup // replies and events in flight
}

type job struct {
	cmd *fleetv1.Command
	rec store.Command
	enc codec.Encoding
}

// New returns a processor. Commands the journal holds as unfinished (taken
// before a crash) are queued to run first.
func New(cfg Config) (*Processor, error) {
	switch {
	case cfg.Journal == nil || cfg.Publisher == nil:
		return nil, errors.New("command: Journal and Publisher are required")
	case cfg.Tenant == "" || cfg.Gateway == "":
		return nil, errors.New("command: Tenant and Gateway are required")
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = DefaultMaxPayload
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	if cfg.Verifier != nil {
		// A replay is refused by the journal while it remembers the id and
		// by its issuedAt after: the horizon must cover the window.
		cfg.Journal.KeepAtLeast(cfg.MaxAge + cfg.MaxSkew)
	}
	p := &Processor{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1)}
	unfinished, err := cfg.Journal.Unfinished()
	if err != nil {
		return nil, fmt.Errorf("read command journal: %w", err)
	}
	for _, rec := range unfinished {
		enc := codec.FromContentType(rec.ContentType)
		cmd := new(fleetv1.Command)
		payload, err := p.openPayload(rec.Payload)
		if err == nil {
			err = codec.Unmarshal(enc, payload, cmd)
		}
		if err != nil {
			// It decoded when it was taken; only a damaged file gets here.
			p.log.Error("cannot resume command; answering it as failed", "command_id", rec.ID, "err", err)
			p.finish(context.Background(), job{cmd: &fleetv1.Command{Id: rec.ID}, rec: rec, enc: enc},
				&fleetv1.Reply{CommandId: rec.ID, Result: fleetv1.Reply_FAILED, Code: fleetv1.Reply_INTERNAL,
					Message: "the agent could not resume this command after a restart: " + err.Error()})
			continue
		}
		p.log.Info("resuming command taken before restart", "command_id", rec.ID, "verb", rec.Verb)
		p.queue = append(p.queue, job{cmd: cmd, rec: rec, enc: enc})
	}
	return p, nil
}

// Verbs returns the verbs that have handlers, in protocol order.
func (p *Processor) Verbs() []topic.Verb {
	var vs []topic.Verb
	for _, v := range topic.Verbs {
		if p.cfg.Handlers[v] != nil {
			vs = append(vs, v)
		}
	}
	return vs
}

// Receive takes one publication from a command topic. It returns once the
// command is checked and, if accepted, durably journaled; it never blocks on
// the network.
func (p *Processor) Receive(in mqttlink.Inbound) {
	enc := codec.FromContentType(in.ContentType)
	to := replyTo{topic: in.ResponseTopic, correlation: in.CorrelationData, enc: enc}
	cmd, verb, err := p.check(in, enc)
	if err != nil {
		id := cmd.GetId()
		if id == "" {
			id = codec.PeekCommandID(enc, in.Payload)
		}
		p.log.Warn("command rejected", "topic", in.Topic, "command_id", id, "err", err)
		if id == "" && to.topic == "" {
			// Nobody to answer: say so on the event topic.
			p.Event(&fleetv1.Event{Severity: fleetv1.Event_WARNING, Kind: "command.rejected", Code: errdefs.Code(err),
				Message: fmt.Sprintf("command on %s rejected and not answered (no id, no response topic): %v", in.Topic, err)})
			return
		}
		p.send(to, rejection(id, err))
		return
	}

	rec := store.Command{ID: cmd.GetId(), Verb: string(verb), ReceivedAt: p.cfg.Now(), Payload: p.sealPayload(in.Payload),
		ContentType: enc.ContentType(), ResponseTopic: in.ResponseTopic, CorrelationData: in.CorrelationData}
	prev, dup, err := p.cfg.Journal.Begin(rec)
	if err != nil {
		// Not journaled: refuse rather than run what might run twice.
		p.log.Error("journal command", "command_id", rec.ID, "err", err)
		p.send(to, &fleetv1.Reply{CommandId: rec.ID, Result: fleetv1.Reply_FAILED, Code: fleetv1.Reply_INTERNAL,
			Message: "the agent could not record the command in its state store (" + err.Error() + "); send it again"})
		return
	}
	if dup {
		p.log.Info("duplicate command; answering with the recorded reply", "command_id", rec.ID)
		p.send(to, recorded(prev))
		return
	}
	p.mu.Lock()
	p.queue = append(p.queue, job{cmd: cmd, rec: rec, enc: enc})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Processor) sealPayload(b []byte) []byte {
	if p.cfg.Cipher == nil {
		return b
	}
	return p.cfg.Cipher.Encrypt(b)
}

func (p *Processor) openPayload(b []byte) ([]byte, error) {
	if p.cfg.Cipher == nil {
		return b, nil
	}
	return p.cfg.Cipher.Decrypt(b)
}

// check decodes and validates a command. On error, the returned command is
// whatever could be decoded (maybe nil).
func (p *Processor) check(in mqttlink.Inbound, enc codec.Encoding) (*fleetv1.Command, topic.Verb, error) {
	t, err := p.cfg.Scheme.Parse(in.Topic)
	if err != nil || t.Kind != topic.Command || t.Tenant != p.cfg.Tenant || t.Gateway != "" && t.Gateway != p.cfg.Gateway {
		return nil, "", errdefs.Invalid("topic", "%q is not a command topic of gateway %s/%s", in.Topic, p.cfg.Tenant, p.cfg.Gateway)
	}
	if len(in.Payload) > p.cfg.MaxPayload {
		return nil, t.Verb, &errdefs.FieldError{Field: "payload", Kind: errdefs.ErrPayloadTooLarge,
			Msg: fmt.Sprintf("%d bytes is over this gateway's limit of %d; send a smaller command or raise --max-payload", len(in.Payload), p.cfg.MaxPayload)}
	}
	if err := p.verify(in); err != nil {
		return nil, t.Verb, err
	}
	cmd := new(fleetv1.Command)
	if err := codec.Unmarshal(enc, in.Payload, cmd); err != nil {
		return nil, t.Verb, errdefs.Invalid("payload", "cannot decode a %s Command (content type %q): %v", enc, in.ContentType, err)
	}
	if err := checkID(cmd.GetId()); err != nil {
		return cmd, t.Verb, err
	}
	if err := p.checkIssued(cmd); err != nil {
		return cmd, t.Verb, err
	}
	body := topic.VerbOf(cmd)
	switch {
	case body == "":
		return cmd, t.Verb, errdefs.Invalid("body", "the command has no body; for verb %s put it under %q", t.Verb, t.Verb.BodyField())
	case body != t.Verb:
		return cmd, t.Verb, errdefs.Invalid("body", "the topic's verb is %s but the body is %q; send it to .../cmd/%s or put the body under %q",
			t.Verb, body.BodyField(), body, t.Verb.BodyField())
	}
	if exp := cmd.GetExpiresAt(); exp != nil && !p.cfg.Now().Before(exp.AsTime()) {
		return cmd, t.Verb, &errdefs.FieldError{Field: "expiresAt", Kind: errdefs.ErrExpired,
			Msg: fmt.Sprintf("the command expired at %s (gateway clock %s); send it again with a later expiresAt",
				exp.AsTime().UTC().Format(time.RFC3339), p.cfg.Now().UTC().Format(time.RFC3339))}
	}
	if p.cfg.Handlers[t.Verb] == nil {
		return cmd, t.Verb, &errdefs.FieldError{Field: "body", Kind: errdefs.ErrUnsupported,
			Msg: fmt.Sprintf("this agent does not support %s; its birth lists the verbs it supports under capabilities", t.Verb)}
	}
	return cmd, t.Verb, nil
}

// verify checks the command's signature when the processor has keys.
func (p *Processor) verify(in mqttlink.Inbound) error {
	if p.cfg.Verifier == nil {
		return nil
	}
	err := p.cfg.Verifier.Verify(in.Topic, in.ContentType, in.Payload, in.UserProperties[cmdsig.PropKeyID], in.UserProperties[cmdsig.PropSignature])
	if err != nil {
		return &errdefs.FieldError{Field: "signature", Kind: errdefs.ErrUnauthenticated,
			Msg: err.Error() + "; this gateway executes only commands signed with its tenant's command-signing keys (--command-signing-keys): send it through the controller"}
	}
	return nil
}

// checkIssued bounds a signed command's age: older than MaxAge it may be a
// replay the journal no longer remembers; issued after now+MaxSkew, one
// that would outlive the journal's memory of it.
func (p *Processor) checkIssued(cmd *fleetv1.Command) error {
	if p.cfg.Verifier == nil {
		return nil
	}
	now := p.cfg.Now()
	if cmd.GetIssuedAt() == nil {
		return errdefs.Invalid("issuedAt", "is required: this gateway checks signed commands' age (--command-max-age)")
	}
	issued := cmd.GetIssuedAt().AsTime()
	switch {
	case issued.Before(now.Add(-p.cfg.MaxAge)):
		return &errdefs.FieldError{Field: "issuedAt", Kind: errdefs.ErrExpired,
			Msg: fmt.Sprintf("the command was issued at %s, more than %s before the gateway's clock (%s); send a new command (or raise --command-max-age)",
				issued.UTC().Format(time.RFC3339), p.cfg.MaxAge, now.UTC().Format(time.RFC3339))}
	case issued.After(now.Add(p.cfg.MaxSkew)):
		return errdefs.Invalid("issuedAt", "%s is more than %s after the gateway's clock (%s); fix the clocks (or raise --command-max-skew)",
			issued.UTC().Format(time.RFC3339), p.cfg.MaxSkew, now.UTC().Format(time.RFC3339))
	}
	return nil
}

func checkID(id string) error {
	if id == "" || len([]rune(id)) > 64 {
		return errdefs.Invalid("id", "must be 1-64 characters (got %d); it is the command's idempotency key", len([]rune(id)))
	}
	if i := slices.IndexFunc([]rune(id), func(r rune) bool { return !unicode.IsPrint(r) }); i >= 0 {
		return errdefs.Invalid("id", "must be printable characters; character %d is not", i+1)
	}
	return nil
}

// Run executes queued commands in order until ctx ends, then waits for
// replies in flight.
func (p *Processor) Run(ctx context.Context) error {
	defer p.sends.Wait()
	for {
		p.mu.Lock()
		var j job
		ok := len(p.queue) > 0
		if ok {
			j, p.queue = p.queue[0], p.queue[1:]
		}
		p.mu.Unlock()
		if !ok {
			select {
			case <-p.wake:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		p.execute(ctx, j)
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (p *Processor) execute(ctx context.Context, j job) {
	id := j.cmd.GetId()
	to := replyTo{topic: j.rec.ResponseTopic, correlation: j.rec.CorrelationData, enc: j.enc}
	var once sync.Once
	start := time.Now()
	x := &Exec{Command: j.cmd, Reply: &fleetv1.Reply{}, accept: func() {
		once.Do(func() { p.send(to, &fleetv1.Reply{CommandId: id, Result: fleetv1.Reply_ACCEPTED}) })
	}}
	x.detach = func() func(error) {
		var done sync.Once
		p.sends.Add(1) // the executor's shutdown waits for detached work too
		return func(err error) {
			done.Do(func() {
				defer p.sends.Done()
				p.complete(ctx, j, x, err, start)
			})
		}
	}
	err := p.run(ctx, p.cfg.Handlers[topic.Verb(j.rec.Verb)], x)
	if x.detached {
		return
	}
	if ctx.Err() != nil && err != nil {
		// Interrupted by shutdown: left unfinished, resumed on next start.
		p.log.Info("command interrupted by shutdown; it resumes on next start", "command_id", id)
		return
	}
	p.complete(ctx, j, x, err, start)
}

// complete records and sends the final reply of an execution.
func (p *Processor) complete(ctx context.Context, j job, x *Exec, err error, start time.Time) {
	id := j.cmd.GetId()
	if ctx.Err() != nil && err != nil && errors.Is(err, context.Canceled) {
		p.log.Info("command interrupted by shutdown; it resumes on next start", "command_id", id)
		return
	}
	r := x.Reply
	r.CommandId, r.Result, r.Code, r.Message, r.Field = id, result(err), errdefs.Code(err), "", errdefs.Field(err)
	if err != nil {
		r.Message = err.Error()
	}
	p.log.Info("command done", "command_id", id, "verb", j.rec.Verb, "result", r.Result, "code", r.Code, "took", time.Since(start))
	p.finish(ctx, j, r)
}

// run calls h, turning a panic into an INTERNAL failure: nothing a command
// contains may take the agent down.
func (p *Processor) run(ctx context.Context, h Handler, x *Exec) (err error) {
	defer func() {
		if v := recover(); v != nil {
			p.log.Error("handler panicked", "command_id", x.Command.GetId(), "panic", v)
			err = fmt.Errorf("internal error while executing the command: %v", v)
		}
	}()
	return h(ctx, x)
}

func (p *Processor) finish(ctx context.Context, j job, r *fleetv1.Reply) {
	r.GatewayId, r.Timestamp = p.cfg.Gateway, timestamppb.New(p.cfg.Now())
	raw, err := proto.Marshal(r)
	if err == nil {
		err = p.cfg.Journal.Finish(j.rec.ID, raw)
	}
	if err != nil {
		p.log.Error("record reply", "command_id", j.rec.ID, "err", err)
	}
	to := replyTo{topic: j.rec.ResponseTopic, correlation: j.rec.CorrelationData, enc: j.enc}
	p.sends.Add(1)
	go func() {
		defer p.sends.Done()
		if p.publishReply(context.WithoutCancel(ctx), to, r) == nil {
			if err := p.cfg.Journal.MarkDelivered(j.rec.ID); err != nil {
				p.log.Warn("mark reply delivered", "command_id", j.rec.ID, "err", err)
			}
		}
	}()
}

// Redeliver sends final replies that the broker never acknowledged, for
// example because the connection dropped just after the command finished.
// The link calls it whenever a connection is ready.
func (p *Processor) Redeliver(ctx context.Context) {
	recs, err := p.cfg.Journal.Undelivered()
	if err != nil {
		p.log.Error("read undelivered replies", "err", err)
		return
	}
	for _, rec := range recs {
		to := replyTo{topic: rec.ResponseTopic, correlation: rec.CorrelationData, enc: codec.FromContentType(rec.ContentType)}
		if p.publishReply(ctx, to, recorded(rec)) == nil {
			if err := p.cfg.Journal.MarkDelivered(rec.ID); err != nil {
				p.log.Warn("mark reply delivered", "command_id", rec.ID, "err", err)
			}
		}
	}
}

type replyTo struct {
	topic       string
	correlation []byte
	enc         codec.Encoding
}

// send publishes a reply in the background.
func (p *Processor) send(to replyTo, r *fleetv1.Reply) {
	if r.Timestamp == nil {
		r.GatewayId, r.Timestamp = p.cfg.Gateway, timestamppb.New(p.cfg.Now())
	}
	p.sends.Add(1)
	go func() {
		defer p.sends.Done()
		_ = p.publishReply(context.Background(), to, r)
	}()
}

const replyTimeout = 30 * time.Second

// publishReply publishes r to the response topic, falling back to the
// gateway's reply topic when the broker refuses the response topic.
func (p *Processor) publishReply(ctx context.Context, to replyTo, r *fleetv1.Reply) error {
	ctx, cancel := context.WithTimeout(ctx, replyTimeout)
	defer cancel()
	payload, err := codec.Marshal(to.enc, r)
	if err != nil {
		return err
	}
	m := mqttlink.Message{Topic: to.topic, Payload: payload, QoS: 1, ContentType: to.enc.ContentType(), CorrelationData: to.correlation}
	fallback := p.cfg.Scheme.Reply(p.cfg.Tenant, p.cfg.Gateway)
	if m.Topic == "" {
		m.Topic = fallback
	}
	err = p.cfg.Publisher.Publish(ctx, m)
	if errors.Is(err, mqttlink.ErrRefused) && m.Topic != fallback {
		p.log.Warn("broker refused the response topic; replying on the gateway's reply topic", "command_id", r.CommandId, "response_topic", m.Topic)
		m.Topic = fallback
		err = p.cfg.Publisher.Publish(ctx, m)
	}
	if err != nil {
		p.log.Warn("reply not delivered", "command_id", r.CommandId, "err", err)
	}
	return err
}

// Event publishes an event in the background.
func (p *Processor) Event(e *fleetv1.Event) {
	e.GatewayId, e.Timestamp = p.cfg.Gateway, timestamppb.New(p.cfg.Now())
	payload, err := codec.Marshal(p.cfg.Encoding, e)
	if err != nil {
		p.log.Error("encode event", "err", err)
		return
	}
	p.sends.Add(1)
	go func() {
		defer p.sends.Done()
		ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
		defer cancel()
		m := mqttlink.Message{Topic: p.cfg.Scheme.Events(p.cfg.Tenant, p.cfg.Gateway), Payload: payload, QoS: 1, ContentType: p.cfg.Encoding.ContentType()}
		if err := p.cfg.Publisher.Publish(ctx, m); err != nil {
			p.log.Warn("event not delivered", "kind", e.Kind, "err", err)
		}
	}()
}

// recorded rebuilds the reply for a journaled command: the final reply if
// it finished, ACCEPTED while it runs.
func recorded(rec store.Command) *fleetv1.Reply {
	if !rec.Finished() {
		return &fleetv1.Reply{CommandId: rec.ID, Result: fleetv1.Reply_ACCEPTED}
	}
	r := new(fleetv1.Reply)
	if err := proto.Unmarshal(rec.Reply, r); err != nil {
		return &fleetv1.Reply{CommandId: rec.ID, Result: fleetv1.Reply_FAILED, Code: fleetv1.Reply_INTERNAL,
			Message: "the recorded reply of this command is damaged: " + err.Error()}
	}
	return r
}

func rejection(id string, err error) *fleetv1.Reply {
	return &fleetv1.Reply{CommandId: id, Result: fleetv1.Reply_REJECTED, Code: errdefs.Code(err), Message: err.Error(), Field: errdefs.Field(err)}
}

func result(err error) fleetv1.Reply_Result {
	if refused(err) {
		return fleetv1.Reply_REJECTED
	}
	switch errdefs.Code(err) {
	case fleetv1.Reply_OK:
		return fleetv1.Reply_SUCCEEDED
	case fleetv1.Reply_INVALID_ARGUMENT, fleetv1.Reply_POLICY_DENIED, fleetv1.Reply_STALE_REVISION,
		fleetv1.Reply_UNSUPPORTED, fleetv1.Reply_EXPIRED:
		return fleetv1.Reply_REJECTED
	}
	return fleetv1.Reply_FAILED
}
