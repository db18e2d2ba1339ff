package controller

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Target selects the gateways of one tenant a command goes to: a list, a
// label selector, a group, or All.
type Target struct {
	Tenant   string
	Gateways []string
	Selector string
	Group    string
	All      bool
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

// Gateways lists the gateways f selects, ordered by tenant and id.
func (c *Controller) Gateways(f inventory.Filter) []*inventory.Gateway { return c.inv.List(f) }

// GatewayPage is a page of the gateways f selects, in natural order of
// tenant and id; see inventory.Inventory.ListPage.
func (c *Controller) GatewayPage(f inventory.Filter, offset, limit int) inventory.Page {
	return c.inv.ListPage(f, offset, limit)
}

// Metrics lists a gateway's heartbeat samples of the last hour, oldest
// first, and its CPU count; false for an unknown gateway.
func (c *Controller) Metrics(tenant, id string) ([]inventory.Sample, uint32, bool) {
	return c.inv.Metrics(tenant, id)
}

// Gateway returns one gateway.
func (c *Controller) Gateway(tenant, id string) (*inventory.Gateway, bool) {
	return c.inv.Get(tenant, id)
}

// resolve lists the target gateways; an explicit id must be in the
// inventory (the controller needs its birth, e.g. to seal credentials).
func (c *Controller) resolve(t Target) ([]*inventory.Gateway, error) {
	if err := topic.CheckID("target.tenant", t.Tenant); err != nil {
		return nil, errdefs.Invalid("target.tenant", "%v", err)
	}
	if len(t.Gateways) > 0 {
		if t.Selector != "" || t.Group != "" || t.All {
			return nil, errdefs.Invalid("target", "give gateways, or a selector and/or group, or all; not gateways with the others")
		}
		return c.listed(t.Tenant, t.Gateways)
	}
	if t.Selector == "" && t.Group == "" && !t.All {
		return nil, errdefs.Invalid("target", "names no gateway: give gateways, a selector, a group, or all: true for the whole tenant")
	}
	sel, err := inventory.ParseSelector(t.Selector)
	if err != nil {
		return nil, errdefs.Invalid("target.selector", "%v", err)
	}
	gws := c.inv.List(inventory.Filter{Tenant: t.Tenant, Selector: sel, Group: t.Group})
	if len(gws) == 0 {
		return nil, &errdefs.FieldError{Field: "target", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("selects no gateway of tenant %s", t.Tenant)}
	}
	return gws, nil
}

// listed returns the gateways ids names, each of which must be in the
// inventory.
func (c *Controller) listed(tenant string, ids []string) ([]*inventory.Gateway, error) {
	out := make([]*inventory.Gateway, 0, len(ids))
	for i, id := range ids {
		g, ok := c.inv.Get(tenant, id)
		if !ok {
			return nil, &errdefs.FieldError{Field: fmt.Sprintf("target.gateways[%d]", i), Kind: errdefs.ErrNotFound,
				Msg: fmt.Sprintf("gateway %s/%s is not in the inventory: it has never sent a birth (list them with `cloud-sim gateways`)", tenant, id)}
		}
		out = append(out, g)
	}
	return out, nil
}

// Send sends cmd (its body; ids are assigned) to every target gateway and
// returns at once with the batch; Wait awaits the outcomes. A deploy (or
// a prefetch) is preceded, per gateway, by the tenant's credential for its image when the
// gateway does not hold it yet, and refused before anything is sent when
// the registry rejects the credential or has no such image. A
// set-credentials with plaintext credentials is sealed to each gateway.
func (c *Controller) Send(ctx context.Context, t Target, cmd *fleetv1.Command, opts SendOptions) (*dispatch.BatchView, error) {
	p, err := c.prepare(ctx, t, cmd, opts)
	if err != nil {
		return nil, err
	}
	b := &dispatch.Batch{ID: dispatch.NewID("b"), Verb: string(p.verb), Tenant: t.Tenant, CreatedAt: c.cfg.Now(), Warnings: p.warnings}
	for _, cr := range p.plain {
		c.creds.Stamp(t.Tenant, cr) // what the gateways will report holding
	}
	jobs := c.jobs(b, p.gws, cmd, p.ahead, p.plain, opts.ExpiresIn)
	if err := c.disp.Record(ctx, b, jobs); err != nil {
		return nil, err
	}
	c.disp.Publish(ctx, jobs, func(j dispatch.Job) {
		if spec := j.Body.GetDeploy().GetSpec(); spec != nil {
			c.sched.Specs().Remember(j.Command.Tenant, j.Command.Gateway, spec)
		}
	})
	v, _ := c.disp.Batch(b.ID)
	return v, nil
}

// prepared is a command Send has checked and is about to send.
type prepared struct {
	verb topic.Verb
	gws  []*inventory.Gateway
	// ahead are the tenant's credentials sent ahead of a deploy (one per
	// registry of its images), check the registry check of its first image
	// (nil when skipped), checks those of all its images.
	ahead  []*fleetv1.Credential
	check  *tenantcred.CheckResult
	checks []*tenantcred.CheckResult
	// plain are a set-credentials' credentials, to seal to each gateway.
	plain    []*fleetv1.Credential
	warnings []string
}

// prepare checks what Send is asked to send, sending and storing nothing:
// the command's body, the target, a deploy's image and credential against
// the registry, a set-credentials' credentials.
func (c *Controller) prepare(ctx context.Context, t Target, cmd *fleetv1.Command, opts SendOptions) (*prepared, error) {
	p := &prepared{verb: topic.VerbOf(cmd)}
	if p.verb == "" {
		return nil, errdefs.Invalid("command", "has no body: give one of deploy, remove, start, stop, restart, setCredentials, deleteCredentials, checkRegistry, rebirth, prefetch, logs, cancelLogs")
	}
	if p.verb == topic.Logs || p.verb == topic.CancelLogs {
		if len(t.Gateways) != 1 || t.Selector != "" || t.Group != "" || t.All {
			return nil, errdefs.Invalid("target", "a %s command goes to one gateway: give target.gateways with one id, not a group, selector or all (to read logs, GET /v1/gateways/{tenant}/{id}/deployments/{name}/logs)", p.verb)
		}
	}
	var err error
	if p.gws, err = c.resolve(t); err != nil {
		return nil, err
	}
	if spec, field := imageSpec(cmd); spec != nil {
		ci, err := c.checkImages(ctx, t.Tenant, specImages(spec, field), opts.SkipRegistryCheck)
		if err != nil {
			return nil, err
		}
		p.ahead, p.check, p.checks = ci.ahead, ci.firstCheck(), ci.checks
		p.warnings = append(p.warnings, ci.warnings...)
	}
	if p.plain, err = plainCredentials(cmd); err != nil {
		return nil, err
	}
	return p, nil
}

// imageSpec is the spec of a command that pulls images (deploy,
// prefetch), and its field in errors.
func imageSpec(cmd *fleetv1.Command) (*fleetv1.DeploymentSpec, string) {
	switch {
	case cmd.GetDeploy() != nil:
		return cmd.GetDeploy().GetSpec(), "command.deploy.spec"
	case cmd.GetPrefetch() != nil:
		return cmd.GetPrefetch().GetSpec(), "command.prefetch.spec"
	}
	return nil, ""
}

// DryRun is what Send would do, had it been asked: the gateways it would
// send to, and the registry check of a deploy's image (nil when skipped).
type DryRun struct {
	Tenant   string
	Gateways []string
	Check    *tenantcred.CheckResult
	// Checks are the checks of every image (an application's services').
	Checks   []*tenantcred.CheckResult
	Warnings []string
}

// DryRun checks everything Send checks, and sends and stores nothing.
func (c *Controller) DryRun(ctx context.Context, t Target, cmd *fleetv1.Command, opts SendOptions) (*DryRun, error) {
	p, err := c.prepare(ctx, t, cmd, opts)
	if err != nil {
		return nil, err
	}
	out := &DryRun{Tenant: t.Tenant, Gateways: make([]string, len(p.gws)), Check: p.check, Checks: p.checks, Warnings: p.warnings}
	for i, g := range p.gws {
		out.Gateways[i] = g.ID
	}
	return out, nil
}

// plainCredentials are the credentials of a set-credentials in plain
// text, validated, which Send seals to each gateway.
func plainCredentials(cmd *fleetv1.Command) ([]*fleetv1.Credential, error) {
	sc := cmd.GetSetCredentials()
	if sc == nil || len(sc.GetCredentials()) == 0 {
		return nil, nil
	}
	for i, cr := range sc.GetCredentials() {
		if _, err := tenantcred.Validate(fmt.Sprintf("command.setCredentials.credentials[%d]", i), cr); err != nil {
			return nil, err
		}
	}
	return sc.GetCredentials(), nil
}

// jobs prepares each gateway's commands: the credential ahead of a deploy
// when the gateway lacks it, then cmd, with plain credentials sealed to
// the gateway. A gateway that cannot get its credentials is a warning.
func (c *Controller) jobs(b *dispatch.Batch, gws []*inventory.Gateway, cmd *fleetv1.Command, ahead, plain []*fleetv1.Credential, expiresIn time.Duration) []dispatch.Job {
	var jobs []dispatch.Job
	add := func(g *inventory.Gateway, body *fleetv1.Command, held []inventory.Registry) {
		j := dispatch.NewJob(b, g.Tenant, g.ID, g.Online, body, expiresIn)
		j.Command.Credentials = held
		jobs = append(jobs, j)
	}
	for _, g := range gws {
		if need := missing(g.Registries, ahead); len(need) > 0 {
			sealed, err := tenantcred.Seal(g.PublicKey, need)
			if err != nil {
				b.Warnings = append(b.Warnings, fmt.Sprintf("%s: %v", g.ID, err))
			} else {
				add(g, sealed, tenantcred.Describe(need))
			}
		}
		body := proto.Clone(cmd).(*fleetv1.Command)
		var held []inventory.Registry
		if plain != nil {
			sealed, err := tenantcred.Seal(g.PublicKey, plain)
			if err != nil {
				b.Warnings = append(b.Warnings, fmt.Sprintf("%s: %v", g.ID, err))
				continue
			}
			body, held = sealed, tenantcred.Describe(plain)
		}
		add(g, body, held)
	}
	return jobs
}

// Command returns one command.
func (c *Controller) Command(id string) (*dispatch.Command, bool) { return c.disp.Command(id) }

// Commands lists the commands f selects, newest first, at most limit.
func (c *Controller) Commands(f dispatch.Filter, limit int) []*dispatch.Command {
	return c.disp.Commands(f, limit)
}

// Batch returns a batch with its commands.
func (c *Controller) Batch(id string) (*dispatch.BatchView, bool) { return c.disp.Batch(id) }

// Batches lists the batches, newest first, at most limit of them.
func (c *Controller) Batches(limit int) []*dispatch.Batch { return c.disp.Batches(limit) }

// Wait returns the batch once every command has its final outcome, or when
// ctx ends; see dispatch.Dispatcher.Wait.
func (c *Controller) Wait(ctx context.Context, id string, progress func(*dispatch.BatchView)) (*dispatch.BatchView, error) {
	return c.disp.Wait(ctx, id, progress)
}
