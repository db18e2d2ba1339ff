package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Command states. PENDING: published, no reply yet (an offline gateway's
// command waits in its session at the broker); ACCEPTED: taken, a final
// reply follows; the final ones are the reply's result; UNDELIVERED: the
// controller could not publish it.
const (
	StatePending     = "PENDING"
	StateAccepted    = "ACCEPTED"
	StateSucceeded   = "SUCCEEDED"
	StateFailed      = "FAILED"
	StateRejected    = "REJECTED"
	StateUndelivered = "UNDELIVERED"
)

// Command is one command to one gateway and its outcome.
type Command struct {
	ID      string `json:"id"`
	Batch   string `json:"batch"`
	Tenant  string `json:"tenant"`
	Gateway string `json:"gateway"`
	Verb    string `json:"verb"`
	State   string `json:"state"`
	// OfflineWhenSent: the gateway was offline; the broker holds the
	// command in its session until it reconnects.
	OfflineWhenSent bool   `json:"offlineWhenSent,omitempty"`
	Code            string `json:"code,omitempty"`
	Message         string `json:"message,omitempty"`
	Field           string `json:"field,omitempty"`
	// Reply is the final reply (status, registry check) as protojson.
	Reply      json.RawMessage `json:"reply,omitempty"`
	SentAt     time.Time       `json:"sentAt"`
	AcceptedAt time.Time       `json:"acceptedAt,omitzero"`
	FinishedAt time.Time       `json:"finishedAt,omitzero"`
	// Credentials a set-credentials carries (sealed), described.
	Credentials []Registry `json:"credentials,omitempty"`
}

// Final reports whether the command has its final outcome.
func (c *Command) Final() bool {
	switch c.State {
	case StatePending, StateAccepted:
		return false
	}
	return true
}

// Failed reports whether the command ended other than SUCCEEDED.
func (c *Command) Failed() bool { return c.Final() && c.State != StateSucceeded }

// commandRecord is a Command as stored: with its payload, encrypted, so
// that an unfinished command can be sent again (same id: the agent answers
// a duplicate with its recorded reply) after a controller restart.
type commandRecord struct {
	Command
	Payload []byte `json:"payload,omitempty"`
}

// Batch is one request that sent commands to one or more gateways.
type Batch struct {
	ID        string    `json:"id"`
	Verb      string    `json:"verb"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"createdAt"`
	Commands  []string  `json:"commands"`
	Warnings  []string  `json:"warnings,omitempty"`
}

// BatchView is a batch with its commands and counts per state.
type BatchView struct {
	Batch
	Commands []*Command     `json:"commands"`
	Counts   map[string]int `json:"counts"`
	Done     bool           `json:"done"`
	Failed   int            `json:"failed"`
}

// Target selects the gateways of one tenant a command goes to: a list, a
// label selector, a group, or All.
type Target struct {
	Tenant   string   `json:"tenant"`
	Gateways []string `json:"gateways,omitempty"`
	Selector string   `json:"selector,omitempty"`
	Group    string   `json:"group,omitempty"`
	All      bool     `json:"all,omitempty"`
}

// resolve lists the target gateways; an explicit id must be in the
// inventory (the controller needs its birth, e.g. to seal credentials).
func (c *Controller) resolve(t Target) ([]*Gateway, error) {
	if err := topic.CheckID("target.tenant", t.Tenant); err != nil {
		return nil, errdefs.Invalid("target.tenant", "%v", err)
	}
	if len(t.Gateways) > 0 {
		if t.Selector != "" || t.Group != "" || t.All {
			return nil, errdefs.Invalid("target", "give gateways, or a selector and/or group, or all; not gateways with the others")
		}
		out := make([]*Gateway, 0, len(t.Gateways))
		for i, id := range t.Gateways {
			g, ok := c.Gateway(t.Tenant, id)
			if !ok {
				return nil, &errdefs.FieldError{Field: fmt.Sprintf("target.gateways[%d]", i), Kind: errdefs.ErrNotFound,
					Msg: fmt.Sprintf("gateway %s/%s is not in the inventory: it has never sent a birth (list them with `cloud-sim gateways`)", t.Tenant, id)}
			}
			out = append(out, g)
		}
		return out, nil
	}
	if t.Selector == "" && t.Group == "" && !t.All {
		return nil, errdefs.Invalid("target", "names no gateway: give gateways, a selector, a group, or all: true for the whole tenant")
	}
	sel, err := ParseSelector(t.Selector)
	if err != nil {
		return nil, errdefs.Invalid("target.selector", "%v", err)
	}
	gws := c.Gateways(Filter{Tenant: t.Tenant, Selector: sel, Group: t.Group})
	if len(gws) == 0 {
		return nil, &errdefs.FieldError{Field: "target", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("selects no gateway of tenant %s", t.Tenant)}
	}
	return gws, nil
}

// Send sends cmd (its body; ids are assigned) to every target gateway and
// returns at once with the batch; Wait awaits the outcomes. A deploy is
// preceded, per gateway, by the tenant's credential for its image when the
// gateway does not hold it yet, and refused before anything is sent when
// the registry rejects the credential or has no such image. A
// set-credentials with plaintext credentials is sealed to each gateway.
func (c *Controller) Send(ctx context.Context, t Target, cmd *fleetv1.Command, opts SendOptions) (*BatchView, error) {
	verb := topic.VerbOf(cmd)
	if verb == "" {
		return nil, errdefs.Invalid("command", "has no body: give one of deploy, remove, start, stop, restart, setCredentials, deleteCredentials, checkRegistry, rebirth")
	}
	gws, err := c.resolve(t)
	if err != nil {
		return nil, err
	}
	b := &Batch{ID: newID("b"), Verb: string(verb), Tenant: t.Tenant, CreatedAt: c.cfg.Now()}
	var creds *fleetv1.Credential // sent ahead of a deploy
	if spec := cmd.GetDeploy().GetSpec(); spec != nil && spec.GetImage() != "" {
		cred, warn, err := c.prepareImage(ctx, t.Tenant, spec.GetImage(), opts.SkipRegistryCheck)
		if err != nil {
			return nil, err
		}
		creds = cred
		if warn != "" {
			b.Warnings = append(b.Warnings, warn)
		}
	}
	var plainCreds []*fleetv1.Credential
	if sc := cmd.GetSetCredentials(); sc != nil && len(sc.GetCredentials()) > 0 {
		for i, cr := range sc.GetCredentials() {
			if _, err := validateCredential(fmt.Sprintf("command.setCredentials.credentials[%d]", i), cr); err != nil {
				return nil, err
			}
		}
		plainCreds = sc.GetCredentials()
	}

	type job struct {
		rec *commandRecord
		cmd *fleetv1.Command
	}
	var jobs []job
	describe := func(list []*fleetv1.Credential) []Registry {
		var out []Registry
		for _, cr := range list {
			scope, _ := credentialScope(cr)
			r := Registry{Registry: scope, Kind: credential.KindOf(cr), Username: cr.GetBasic().GetUsername(), Fingerprint: fingerprint(cr)}
			if t := cr.GetEcrToken().GetExpiresAt(); t != nil {
				r.ExpiresAt = t.AsTime()
			}
			out = append(out, r)
		}
		return out
	}
	add := func(g *Gateway, body *fleetv1.Command, held []Registry) {
		body.Id, body.IssuedAt = newID("c"), timestamppb.New(b.CreatedAt)
		if opts.ExpiresIn > 0 {
			body.ExpiresAt = timestamppb.New(b.CreatedAt.Add(opts.ExpiresIn))
		}
		rec := &commandRecord{Command: Command{ID: body.Id, Batch: b.ID, Tenant: g.Tenant, Gateway: g.ID, Verb: string(topic.VerbOf(body)),
			State: StatePending, OfflineWhenSent: !g.Online, SentAt: b.CreatedAt, Credentials: held}}
		b.Commands = append(b.Commands, rec.ID)
		jobs = append(jobs, job{rec, body})
	}
	for _, g := range gws {
		if creds != nil && !holds(g, creds) {
			sealed, err := c.sealFor(g, []*fleetv1.Credential{creds})
			if err != nil {
				b.Warnings = append(b.Warnings, fmt.Sprintf("%s: %v", g.ID, err))
			} else {
				add(g, sealed, describe([]*fleetv1.Credential{creds}))
			}
		}
		body := proto.Clone(cmd).(*fleetv1.Command)
		var held []Registry
		if plainCreds != nil {
			held = describe(plainCreds)
			sealed, err := c.sealFor(g, plainCreds)
			if err != nil {
				b.Warnings = append(b.Warnings, fmt.Sprintf("%s: %v", g.ID, err))
				continue
			}
			body = sealed
		}
		add(g, body, held)
	}
	// Record every command before the first is published, so that no
	// reply can arrive for a command the controller does not know.
	records := make(map[string]any, len(jobs)+1)
	c.mu.Lock()
	c.batches[b.ID] = b
	for _, j := range jobs {
		payload, err := proto.Marshal(j.cmd)
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		j.rec.Payload = c.cfg.Keys.Encrypt(payload)
		c.commands[j.rec.ID] = j.rec
		records[state.Key("cmd", j.rec.ID)] = j.rec
	}
	records[state.Key("batch", b.ID)] = b
	c.mu.Unlock()
	if err := c.store.PutMany(ctx, state.Commands, records); err != nil {
		return nil, fmt.Errorf("record commands: %w", err)
	}
	c.hub.publish(Change{Kind: "batch.created", At: b.CreatedAt, Tenant: b.Tenant, Batch: b.ID, Message: fmt.Sprintf("%s to %d gateways", verb, len(gws))})

	// Publish with bounded concurrency across gateways, and in order for
	// each gateway (its credentials before the deploy that needs them):
	// each publish waits for the broker's PUBACK, and the agent executes
	// its commands in the order they arrive.
	var order []string
	perGateway := map[string][]job{}
	for _, j := range jobs {
		k := j.rec.Tenant + "/" + j.rec.Gateway
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
		go func(list []job) {
			defer func() { <-sem; wg.Done() }()
			for _, j := range list {
				if err := c.con.Publish(ctx, j.rec.Tenant, j.rec.Gateway, j.cmd); err != nil {
					c.finish(j.rec.ID, StateUndelivered, "", err.Error(), "", nil)
				} else if spec := j.cmd.GetDeploy().GetSpec(); spec != nil {
					c.rememberSpec(j.rec.Tenant, j.rec.Gateway, spec)
				}
			}
		}(perGateway[k])
	}
	wg.Wait()
	v, _ := c.Batch(b.ID)
	return v, nil
}

// SendOptions adjusts Send.
type SendOptions struct {
	// ExpiresIn makes the agent refuse the command (EXPIRED) when it gets
	// it later than this after sending; 0 means never.
	ExpiresIn time.Duration
	// SkipRegistryCheck sends a deploy without checking its image and
	// credential against the registry from the cloud first.
	SkipRegistryCheck bool
}

// holds reports whether the gateway's birth (or a set-credentials it
// answered since) shows cred with the same secret.
func holds(g *Gateway, cred *fleetv1.Credential) bool {
	scope, err := credentialScope(cred)
	if err != nil {
		return false
	}
	fp := fingerprint(cred)
	return slices.ContainsFunc(g.Registries, func(r Registry) bool { return r.Registry == scope && r.Fingerprint == fp })
}

// reply applies a gateway's reply to its command.
func (c *Controller) reply(tenant, gateway string, rep *fleetv1.Reply, at time.Time) {
	c.mu.Lock()
	cmd := c.commands[rep.GetCommandId()]
	if cmd == nil || cmd.Tenant != tenant || cmd.Gateway != gateway || cmd.Final() {
		c.mu.Unlock()
		return // another console's, a duplicate, or a forged one from another gateway
	}
	if g := c.gateways[state.Key(tenant, gateway)]; g != nil {
		g.LastSeen = at
	}
	c.mu.Unlock()
	if rep.GetResult() == fleetv1.Reply_ACCEPTED {
		c.mu.Lock()
		cmd.State, cmd.AcceptedAt = StateAccepted, at
		c.dirtyCmd(cmd.ID)
		c.mu.Unlock()
		c.hub.publish(Change{Kind: "command.accepted", At: at, Tenant: tenant, Gateway: gateway, Command: cmd.ID, Batch: cmd.Batch, State: StateAccepted})
		return
	}
	st := rep.GetResult().String()
	if rep.GetResult() == fleetv1.Reply_RESULT_UNSPECIFIED {
		st = StateFailed
	}
	raw, _ := protojson.Marshal(rep)
	code := ""
	if rep.GetCode() != fleetv1.Reply_OK {
		code = rep.GetCode().String()
	}
	c.finish(cmd.ID, st, code, rep.GetMessage(), rep.GetField(), raw)
}

// finish records a command's final outcome.
func (c *Controller) finish(id, st, code, msg, field string, reply json.RawMessage) {
	c.mu.Lock()
	cmd := c.commands[id]
	if cmd == nil || cmd.Final() {
		c.mu.Unlock()
		return
	}
	cmd.State, cmd.Code, cmd.Message, cmd.Field, cmd.Reply, cmd.FinishedAt = st, code, msg, field, reply, c.cfg.Now()
	c.dirtyCmd(id)
	if st == StateSucceeded && cmd.Verb == string(topic.SetCredentials) {
		c.noteCredentialsHeld(cmd)
	}
	ch := Change{Kind: "command.finished", At: cmd.FinishedAt, Tenant: cmd.Tenant, Gateway: cmd.Gateway, Command: id, Batch: cmd.Batch, State: st, Message: msg}
	c.mu.Unlock()
	c.hub.publish(ch)
}

// dirtyCmd marks a command for the next flush; c.mu is held.
func (c *Controller) dirtyCmd(id string) { c.dirtyCmds[id] = struct{}{} }

// Command returns one command.
func (c *Controller) Command(id string) (*Command, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd := c.commands[id]
	if cmd == nil {
		return nil, false
	}
	v := cmd.Command
	return &v, true
}

// Batch returns a batch with its commands.
func (c *Controller) Batch(id string) (*BatchView, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.batches[id]
	if b == nil {
		return nil, false
	}
	v := &BatchView{Batch: *b, Counts: map[string]int{}, Done: true}
	for _, cid := range b.Commands {
		cmd := c.commands[cid]
		if cmd == nil {
			continue
		}
		cc := cmd.Command
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
func (c *Controller) Batches(limit int) []*Batch {
	c.mu.Lock()
	out := make([]*Batch, 0, len(c.batches))
	for _, b := range c.batches {
		bc := *b
		out = append(out, &bc)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Wait returns the batch once every command has its final outcome, or when
// ctx ends, with what is known then. progress, if set, sees the batch
// every 200 ms meanwhile.
func (c *Controller) Wait(ctx context.Context, id string, progress func(*BatchView)) (*BatchView, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		v, ok := c.Batch(id)
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

// resendUnfinished publishes again, with the same ids, the commands that
// have no final outcome: the agent answers one it already executed with
// its recorded reply, so an outcome lost in a controller crash comes back.
func (c *Controller) resendUnfinished(ctx context.Context) {
	// In the order they were first sent: batch by batch, and within a
	// batch as listed (a gateway's credentials before its deploy).
	var recs []commandRecord
	c.mu.Lock()
	batches := make([]*Batch, 0, len(c.batches))
	for _, b := range c.batches {
		batches = append(batches, b)
	}
	sort.Slice(batches, func(i, j int) bool { return batches[i].CreatedAt.Before(batches[j].CreatedAt) })
	for _, b := range batches {
		for _, id := range b.Commands {
			if rec := c.commands[id]; rec != nil && !rec.Final() {
				recs = append(recs, *rec)
			}
		}
	}
	c.mu.Unlock()
	for _, rec := range recs {
		raw, err := c.cfg.Keys.Decrypt(rec.Payload)
		cmd := new(fleetv1.Command)
		if err == nil {
			err = proto.Unmarshal(raw, cmd)
		}
		if err == nil {
			err = c.con.Publish(ctx, rec.Tenant, rec.Gateway, cmd)
		}
		if err != nil {
			c.log.Warn("cannot resend unfinished command", "command_id", rec.ID, "err", err)
		}
	}
	if len(recs) > 0 {
		c.log.Info("resent unfinished commands to recover their outcomes", "count", len(recs))
	}
}

func (c *Controller) loadCommand(raw []byte) error {
	var probe struct {
		Commands []string `json:"commands"`
		Batch    string   `json:"batch"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return err
	}
	if probe.Commands != nil || probe.Batch == "" {
		var b Batch
		if err := json.Unmarshal(raw, &b); err != nil {
			return err
		}
		c.batches[b.ID] = &b
		return nil
	}
	var rec commandRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return err
	}
	c.commands[rec.ID] = &rec
	return nil
}

func newID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// rememberSpec records the last spec sent to a gateway's deployment, what
// a rollout's rollback deploys again.
func (c *Controller) rememberSpec(tenant, gw string, spec *fleetv1.DeploymentSpec) {
	raw, err := protojson.Marshal(spec)
	if err != nil {
		return
	}
	k := specKey(tenant, gw, spec.GetName())
	c.mu.Lock()
	c.lastSpecs[k] = raw
	c.dirtySpecs[k] = struct{}{}
	c.mu.Unlock()
}
