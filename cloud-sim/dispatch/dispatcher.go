package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Publisher publishes a command to a gateway and returns once the broker
// has it.
type Publisher interface {
	Publish(ctx context.Context, tenant, gateway string, cmd *fleetv1.Command) error
}

// Cipher encrypts command payloads at rest.
type Cipher interface {
	Encrypt(plain []byte) []byte
	Decrypt(enc []byte) ([]byte, error)
}

// Config configures a Dispatcher.
type Config struct {
	Store  *state.Store
	Cipher Cipher
	// Changes receives command and batch changes (none when nil).
	Changes *changes.Hub
	// Late, when set, is called with a command a reply kept early
	// (Reply) was applied to once its record arrived from the store.
	Late   func(Command)
	Logger *slog.Logger
	Now    func() time.Time
}

// Dispatcher sends commands and records their outcomes.
type Dispatcher struct {
	cfg Config
	log *slog.Logger
	hub *changes.Hub
	pub Publisher // set by Start

	mu       sync.Mutex
	commands map[string]*record // by id; guarded by mu
	batches  map[string]*Batch  // by id; guarded by mu
	// listless are the batches stored without their command list, whose
	// list is made of the commands that name them; unsorted those whose
	// list is not yet in the order sent (see sorted). Guarded by mu.
	listless, unsorted map[string]bool
	dirty              map[string]struct{}   // commands changed since the last flush; guarded by mu
	early              map[string]earlyReply // replies to commands not known yet, by command id; guarded by mu

	stop chan struct{}
	done sync.WaitGroup
}

// New returns a dispatcher; Load fills it from the store.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil || cfg.Cipher == nil {
		return nil, errors.New("dispatch: Store and Cipher are required")
	}
	if cfg.Changes == nil {
		cfg.Changes = new(changes.Hub)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Dispatcher{cfg: cfg, log: cfg.Logger, hub: cfg.Changes, commands: map[string]*record{},
		batches: map[string]*Batch{}, listless: map[string]bool{}, unsorted: map[string]bool{}, dirty: map[string]struct{}{}, stop: make(chan struct{})}, nil
}

// Load reads the stored batches and commands.
func (d *Dispatcher) Load(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.cfg.Store.Each(ctx, state.Commands, func(_ string, raw []byte) error {
		return d.take(raw)
	})
	if err != nil {
		return fmt.Errorf("dispatch: load: %w", err)
	}
	return nil
}

// take adds a stored batch or command, or merges a stored command into the
// one held (see ahead). d.mu is held.
func (d *Dispatcher) take(raw []byte) error {
	var probe struct {
		Commands []string `json:"commands"`
		Batch    string   `json:"batch"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return err
	}
	if probe.Commands != nil || probe.Batch == "" {
		var b state.Batch
		if err := json.Unmarshal(raw, &b); err != nil {
			return err
		}
		d.takeBatch(&b)
		return nil
	}
	var c state.Command
	if err := json.Unmarshal(raw, &c); err != nil {
		return err
	}
	rec := restoreCommand(&c)
	held := d.commands[c.ID]
	if held == nil || ahead(rec.State, held.State) {
		d.commands[c.ID] = rec
	}
	if b := d.batches[c.Batch]; held == nil && b != nil && d.listless[c.Batch] {
		b.Commands = append(b.Commands, c.ID)
		d.unsorted[c.Batch] = true
	}
	return nil
}

// takeBatch adds stored batch s. One stored without its command list (see
// state.Batch) lists the commands held that name it, and those taken
// later. d.mu is held.
func (d *Dispatcher) takeBatch(s *state.Batch) {
	b := &Batch{ID: s.ID, Verb: s.Verb, Tenant: s.Tenant, CreatedAt: s.CreatedAt, Commands: s.Commands, Warnings: s.Warnings}
	if held := d.batches[s.ID]; held != nil && len(s.Commands) == 0 {
		return // this replica's own, listed in memory
	}
	d.batches[s.ID] = b
	if s.Count == 0 || len(s.Commands) > 0 {
		return
	}
	d.listless[s.ID], d.unsorted[s.ID] = true, true
	for id, rec := range d.commands {
		if rec.Batch == s.ID {
			b.Commands = append(b.Commands, id)
		}
	}
}

// sorted puts the commands of a batch rebuilt from its commands (see
// takeBatch) in the order they were sent: by gateway, and for each its
// credentials before the command that needs them. d.mu is held.
func (d *Dispatcher) sorted(b *Batch) *Batch {
	if !d.unsorted[b.ID] {
		return b
	}
	rank := func(id string) (string, int) {
		rec := d.commands[id]
		if rec == nil {
			return "", 0
		}
		r := 1
		if rec.Verb == string(topic.SetCredentials) || rec.Verb == string(topic.DeleteCredentials) {
			r = 0
		}
		return rec.Tenant + "/" + rec.Gateway, r
	}
	slices.SortStableFunc(b.Commands, func(x, y string) int {
		gx, rx := rank(x)
		gy, ry := rank(y)
		if c := strings.Compare(gx, gy); c != 0 {
			return c
		}
		return rx - ry
	})
	delete(d.unsorted, b.ID)
	return b
}

// ahead reports whether a command in state s is further than one in held:
// a final outcome beats none, ACCEPTED beats PENDING; a final outcome is
// never replaced.
func ahead(s, held State) bool {
	switch {
	case held.Final():
		return false
	case s.Final():
		return true
	}
	return s == Accepted && held == Pending
}

// Watch keeps the dispatcher current with the commands every replica
// records and the outcomes each applies, until ctx ends or stop is called:
// any replica then answers for any command, a reply that reaches a
// replica other than the sender's is applied there and written, and the
// rollout scheduler learns the outcomes of every replica's commands. It
// returns once the stored commands are loaded (it replaces Load).
func (d *Dispatcher) Watch(ctx context.Context) (stop func(), err error) {
	return d.cfg.Store.Watch(ctx, state.Commands, func(e state.Entry) {
		if e.Deleted {
			return // pruned: each replica prunes its own copy too
		}
		d.mu.Lock()
		err := d.take(e.Value)
		late := d.takeEarly()
		d.mu.Unlock()
		if err != nil {
			d.log.Warn("dispatch: stored command not readable; ignored", "key", e.Key, "err", err)
		}
		for _, r := range late {
			if cmd, ok := d.Reply(r.tenant, r.gateway, r.rep, r.at); ok && d.cfg.Late != nil {
				d.cfg.Late(cmd)
			}
		}
	})
}

// Len is how many commands the dispatcher holds.
func (d *Dispatcher) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.commands)
}

// Start publishes through pub from now on, and resends the unfinished
// commands in the background; Close stops that.
func (d *Dispatcher) Start(pub Publisher) {
	d.pub = pub
	ctx, cancel := context.WithCancel(context.Background())
	d.done.Add(2)
	go func() {
		defer d.done.Done()
		select {
		case <-d.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer d.done.Done()
		defer cancel()
		d.Resend(ctx)
	}()
}

// Close stops the resending and waits for it.
func (d *Dispatcher) Close() {
	close(d.stop)
	d.done.Wait()
}

// Job is one command to one gateway, to record and send.
type Job struct {
	Command *Command
	Body    *fleetv1.Command
}

// NewJob prepares body for gw and adds it to b: assigns its id and times,
// and describes it as a PENDING command.
func NewJob(b *Batch, tenant, gw string, online bool, body *fleetv1.Command, expiresIn time.Duration) Job {
	return NewJobID(b, NewID("c"), tenant, gw, online, body, expiresIn)
}

// NewJobID is NewJob with the command id given: a logs command's id names
// the topic of its chunks, subscribed to before the command is recorded.
func NewJobID(b *Batch, id, tenant, gw string, online bool, body *fleetv1.Command, expiresIn time.Duration) Job {
	body.Id, body.IssuedAt = id, timestampOf(b.CreatedAt)
	if expiresIn > 0 {
		body.ExpiresAt = timestampOf(b.CreatedAt.Add(expiresIn))
	}
	cmd := &Command{ID: body.Id, Batch: b.ID, Tenant: tenant, Gateway: gw, Verb: string(topic.VerbOf(body)),
		State: Pending, OfflineWhenSent: !online, SentAt: b.CreatedAt}
	b.Commands = append(b.Commands, cmd.ID)
	return Job{Command: cmd, Body: body}
}

// Record stores the batch and its jobs' commands before any is published,
// so that no reply can arrive for a command the controller does not know.
func (d *Dispatcher) Record(ctx context.Context, b *Batch, jobs []Job) error {
	records := make(map[string]any, len(jobs)+1)
	recs := make([]*record, 0, len(jobs))
	for _, j := range jobs {
		payload, err := proto.Marshal(j.Body)
		if err != nil {
			return err
		}
		rec := &record{Command: *j.Command, Payload: d.cfg.Cipher.Encrypt(payload)}
		recs = append(recs, rec)
		records[state.Key("cmd", rec.ID)] = rec.stored()
	}
	records[state.Key("batch", b.ID)] = storedBatch(b)
	d.mu.Lock()
	d.batches[b.ID] = b
	for _, rec := range recs {
		d.commands[rec.ID] = rec
	}
	d.mu.Unlock()
	if err := d.cfg.Store.PutMany(ctx, state.Commands, records); err != nil {
		return fmt.Errorf("record commands: %w", err)
	}
	d.hub.Publish(changes.Change{Kind: "batch.created", At: b.CreatedAt, Tenant: b.Tenant, Batch: b.ID,
		Message: fmt.Sprintf("%s to %d gateways", b.Verb, gatewayCount(jobs))})
	return nil
}

// inlineCommands is the most command ids a stored batch lists: 10,000
// ids of 21 bytes are about 210 KiB of NATS's 1 MiB message.
const inlineCommands = 10000

// storedBatch is b as the store keeps it: without its command list when
// that is longer than inlineCommands (each command names its batch).
func storedBatch(b *Batch) *state.Batch {
	s := &state.Batch{ID: b.ID, Verb: b.Verb, Tenant: b.Tenant, CreatedAt: b.CreatedAt, Commands: b.Commands, Warnings: b.Warnings}
	if len(b.Commands) > inlineCommands {
		s.Commands, s.Count = nil, len(b.Commands)
	}
	return s
}

func gatewayCount(jobs []Job) int {
	seen := map[string]struct{}{}
	for _, j := range jobs {
		seen[j.Command.Tenant+"/"+j.Command.Gateway] = struct{}{}
	}
	return len(seen)
}

// Publish publishes the jobs with bounded concurrency across gateways and
// in order for each gateway (its credentials before the deploy that needs
// them): each publish waits for the broker's PUBACK, and the agent
// executes its commands in the order they arrive. sent, when set, is
// called for each job the broker took.
func (d *Dispatcher) Publish(ctx context.Context, jobs []Job, sent func(Job)) {
	var order []string
	perGateway := map[string][]Job{}
	for _, j := range jobs {
		k := j.Command.Tenant + "/" + j.Command.Gateway
		if _, ok := perGateway[k]; !ok {
			order = append(order, k)
		}
		perGateway[k] = append(perGateway[k], j)
	}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, k := range order {
		sem <- struct{}{}
		wg.Add(1)
		go func(list []Job) {
			defer func() { <-sem; wg.Done() }()
			for _, j := range list {
				if err := d.pub.Publish(ctx, j.Command.Tenant, j.Command.Gateway, j.Body); err != nil {
					d.finish(j.Command.ID, Undelivered, "", err.Error(), "", nil)
				} else if sent != nil {
					sent(j)
				}
			}
		}(perGateway[k])
	}
	wg.Wait()
}

// Send records cmd, under its id, as a command of batch (a rollout) to
// gw unless it is known already, and publishes it.
func (d *Dispatcher) Send(ctx context.Context, batch, tenant, gw string, online bool, cmd *fleetv1.Command) error {
	payload, err := proto.Marshal(cmd)
	if err != nil {
		return err
	}
	d.mu.Lock()
	if _, known := d.commands[cmd.Id]; !known {
		d.commands[cmd.Id] = &record{Command: Command{ID: cmd.Id, Batch: batch, Tenant: tenant, Gateway: gw, Verb: string(topic.VerbOf(cmd)),
			State: Pending, OfflineWhenSent: !online, SentAt: d.cfg.Now()}, Payload: d.cfg.Cipher.Encrypt(payload)}
		d.dirty[cmd.Id] = struct{}{}
	}
	d.mu.Unlock()
	return d.pub.Publish(ctx, tenant, gw, cmd)
}

// Undelivered records that the command id (of batch, to gw) could not be
// sent.
func (d *Dispatcher) Undelivered(id, batch, tenant, gw, verb string, cause error) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	rec := d.commands[id]
	switch {
	case rec == nil:
		d.commands[id] = &record{Command: Command{ID: id, Batch: batch, Tenant: tenant, Gateway: gw,
			Verb: verb, State: Undelivered, Message: cause.Error(), SentAt: now, FinishedAt: now}}
	case !rec.Final():
		rec.State, rec.Message, rec.FinishedAt = Undelivered, cause.Error(), now
	default:
		return
	}
	d.dirty[id] = struct{}{}
}

// Reply applies a gateway's reply to its command. It reports the command
// as it is now, and false for a reply to no command of that gateway's
// (another console's, a duplicate, or a forged one).
//
// A reply to a command not known yet is kept a while (see early): with
// several replicas, it may arrive before the record another wrote.
func (d *Dispatcher) Reply(tenant, gateway string, rep *fleetv1.Reply, at time.Time) (Command, bool) {
	d.mu.Lock()
	rec := d.commands[rep.GetCommandId()]
	if rec == nil {
		d.keepEarly(tenant, gateway, rep, at)
	}
	if rec == nil || rec.Tenant != tenant || rec.Gateway != gateway || rec.Final() {
		d.mu.Unlock()
		return Command{}, false
	}
	if rep.GetResult() == fleetv1.Reply_ACCEPTED {
		rec.State, rec.AcceptedAt = Accepted, at
		d.dirty[rec.ID] = struct{}{}
		cmd := rec.Command
		d.mu.Unlock()
		d.hub.Publish(changes.Change{Kind: "command.accepted", At: at, Tenant: tenant, Gateway: gateway, Command: cmd.ID, Batch: cmd.Batch, State: string(Accepted)})
		return cmd, true
	}
	d.mu.Unlock()
	st := State(rep.GetResult().String())
	if rep.GetResult() == fleetv1.Reply_RESULT_UNSPECIFIED {
		st = Failed
	}
	raw, _ := protojson.Marshal(rep)
	code := ""
	if rep.GetCode() != fleetv1.Reply_OK {
		code = rep.GetCode().String()
	}
	return d.finish(rep.GetCommandId(), st, code, rep.GetMessage(), rep.GetField(), raw), true
}

// finish records a command's final outcome and returns the command.
func (d *Dispatcher) finish(id string, st State, code, msg, field string, reply json.RawMessage) Command {
	d.mu.Lock()
	rec := d.commands[id]
	if rec == nil || rec.Final() {
		d.mu.Unlock()
		return Command{}
	}
	rec.State, rec.Code, rec.Message, rec.Field, rec.Reply, rec.FinishedAt = st, code, msg, field, reply, d.cfg.Now()
	d.dirty[id] = struct{}{}
	cmd := rec.Command
	d.mu.Unlock()
	sev := changes.Info
	if st != Succeeded {
		sev = changes.Error
	}
	d.hub.Publish(changes.Change{Kind: "command.finished", Severity: sev, At: cmd.FinishedAt, Tenant: cmd.Tenant, Gateway: cmd.Gateway,
		Command: id, Batch: cmd.Batch, State: string(st), Message: msg})
	return cmd
}

// Command returns one command.
func (d *Dispatcher) Command(id string) (*Command, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rec := d.commands[id]
	if rec == nil {
		return nil, false
	}
	v := rec.Command
	return &v, true
}

// Batch returns a batch with its commands.
func (d *Dispatcher) Batch(id string) (*BatchView, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.batches[id]
	if b == nil {
		return nil, false
	}
	b = d.sorted(b)
	v := &BatchView{Batch: *b, Counts: map[State]int{}, Done: true}
	for _, cid := range b.Commands {
		rec := d.commands[cid]
		if rec == nil {
			continue
		}
		cc := rec.Command
		v.Commands = append(v.Commands, &cc)
		v.Counts[cc.State]++
		if !cc.Final() {
			v.Done = false
		}
		if cc.Failed() {
			v.Failed++
		}
	}
	return v, true
}

// Batches lists the batches, newest first, at most limit of them.
func (d *Dispatcher) Batches(limit int) []*Batch {
	d.mu.Lock()
	out := make([]*Batch, 0, len(d.batches))
	for _, b := range d.batches {
		bc := *b
		out = append(out, &bc)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Wait returns the batch once every command has its final outcome, or when
// ctx ends, with what is known then. progress, if set, sees the batch
// every 200 ms meanwhile.
func (d *Dispatcher) Wait(ctx context.Context, id string, progress func(*BatchView)) (*BatchView, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		v, ok := d.Batch(id)
		if !ok {
			return nil, &errdefs.FieldError{Field: "batch", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("no batch %s", id)}
		}
		if progress != nil {
			progress(v)
		}
		if v.Done {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, nil
		case <-tick.C:
		}
	}
}

// earlyReply is a reply to a command not known yet.
type earlyReply struct {
	tenant, gateway string
	rep             *fleetv1.Reply
	at              time.Time
}

// Early replies are kept a minute, a bounded number of them: another
// replica's record of a command reaches this one within a flush.
const (
	earlyTTL = time.Minute
	maxEarly = 10_000
)

// keepEarly keeps rep, to no known command. d.mu is held.
func (d *Dispatcher) keepEarly(tenant, gateway string, rep *fleetv1.Reply, at time.Time) {
	if d.early == nil {
		d.early = map[string]earlyReply{}
	}
	now := d.cfg.Now()
	if len(d.early) >= maxEarly {
		for id, r := range d.early {
			if now.Sub(r.at) > earlyTTL {
				delete(d.early, id)
			}
		}
		if len(d.early) >= maxEarly {
			return
		}
	}
	id := rep.GetCommandId()
	if old, ok := d.early[id]; ok && old.rep.GetResult() != fleetv1.Reply_ACCEPTED {
		return // the final one is kept
	}
	d.early[id] = earlyReply{tenant: tenant, gateway: gateway, rep: rep, at: at}
}

// takeEarly removes and returns the early replies whose command is known
// now. d.mu is held.
func (d *Dispatcher) takeEarly() []earlyReply {
	var out []earlyReply
	for id, r := range d.early {
		if d.commands[id] != nil {
			out = append(out, r)
			delete(d.early, id)
		}
	}
	return out
}
