// Package handlers adapts the command verbs to the agent's domain: each
// handler decodes its verb's body, calls the reconciler or the keychain with
// plain values, and writes the reply. Work that takes long (a rollout) is
// detached once the domain has accepted it: the command is answered
// ACCEPTED at once and its final reply follows when the work is over.
// Errors about input name fields of the domain call ("spec.image",
// "name"); the handlers put them under the verb's body ("deploy.spec.image",
// "stop.name"), as replies name fields of the command.
package handlers

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Deployments is what the deployment verbs call (reconcile.Reconciler).
type Deployments interface {
	Apply(ctx context.Context, spec *fleetv1.DeploymentSpec, accepted func()) (*fleetv1.DeploymentStatus, error)
	Stop(ctx context.Context, name string) (*fleetv1.DeploymentStatus, error)
	Start(ctx context.Context, name string, accepted func()) (*fleetv1.DeploymentStatus, error)
	Restart(ctx context.Context, name string, accepted func()) (*fleetv1.DeploymentStatus, error)
	Remove(ctx context.Context, name string, removeImage bool) error
	Prefetch(ctx context.Context, spec *fleetv1.DeploymentSpec, accepted func()) (*fleetv1.DeploymentStatus, error)
}

// Services is what the deployment verbs call to act on one service of an
// application (the command's service field) and to remove its volumes
// (removeVolumes) (reconcile.Reconciler).
type Services interface {
	StopService(ctx context.Context, name, service string) (*fleetv1.DeploymentStatus, error)
	StartService(ctx context.Context, name, service string, accepted func()) (*fleetv1.DeploymentStatus, error)
	RestartService(ctx context.Context, name, service string, accepted func()) (*fleetv1.DeploymentStatus, error)
	RemoveWith(ctx context.Context, name string, removeImage, removeVolumes bool) error
}

// Credentials is what the credential verbs call (regauth.Keychain).
type Credentials interface {
	Set(ctx context.Context, creds []*fleetv1.Credential) error
	Delete(ctx context.Context, registries []string) error
	Check(ctx context.Context, image string) (*fleetv1.RegistryCheck, error)
}

// Config configures the handlers.
type Config struct {
	Deployments Deployments
	// Services, when set, serves commands naming a service or asking for
	// removeVolumes; without it they are refused (UNSUPPORTED).
	Services    Services
	Credentials Credentials
	// OpenSealed opens a sealed set-credentials body (a box sealed to the
	// gateway's public key).
	OpenSealed func(sealed []byte) ([]byte, error)
	// RequireSealed refuses credentials sent in plaintext.
	RequireSealed bool
}

// New returns the handlers of the deployment and credential verbs.
func New(cfg Config) (map[topic.Verb]command.Handler, error) {
	if cfg.Deployments == nil || cfg.Credentials == nil || cfg.OpenSealed == nil {
		return nil, errors.New("handlers: Deployments, Credentials and OpenSealed are required")
	}
	h := handlers{cfg}
	return map[topic.Verb]command.Handler{
		topic.Deploy:            h.deploy,
		topic.Remove:            h.remove,
		topic.Start:             h.start,
		topic.Stop:              h.stop,
		topic.Restart:           h.restart,
		topic.SetCredentials:    h.setCredentials,
		topic.DeleteCredentials: h.deleteCredentials,
		topic.CheckRegistry:     h.checkRegistry,
		topic.Prefetch:          h.prefetch,
	}, nil
}

type handlers struct{ cfg Config }

func (h handlers) deploy(ctx context.Context, x *command.Exec) error {
	spec := x.Command.GetDeploy().GetSpec()
	if spec == nil {
		return errdefs.Invalid("deploy.spec", "is missing; a deploy command carries the deployment spec under deploy.spec")
	}
	return detachOnAccept(ctx, x, func(ctx context.Context, accepted func()) (*fleetv1.DeploymentStatus, error) {
		st, err := h.cfg.Deployments.Apply(ctx, spec, accepted)
		return st, under("deploy", err, "")
	})
}

func (h handlers) prefetch(ctx context.Context, x *command.Exec) error {
	spec := x.Command.GetPrefetch().GetSpec()
	if spec == nil {
		return errdefs.Invalid("prefetch.spec", "is missing; a prefetch command carries the deployment spec under prefetch.spec")
	}
	return detachOnAccept(ctx, x, func(ctx context.Context, accepted func()) (*fleetv1.DeploymentStatus, error) {
		st, err := h.cfg.Deployments.Prefetch(ctx, spec, accepted)
		return st, under("prefetch", err, "")
	})
}

func (h handlers) stop(ctx context.Context, x *command.Exec) error {
	ref := x.Command.GetStop()
	if ref.GetService() == "" {
		st, err := h.cfg.Deployments.Stop(ctx, ref.GetName())
		x.Reply.Status = st
		return under("stop", err, "name")
	}
	if err := h.services("stop"); err != nil {
		return err
	}
	st, err := h.cfg.Services.StopService(ctx, ref.GetName(), ref.GetService())
	x.Reply.Status = st
	return underRef("stop", err)
}

func (h handlers) start(ctx context.Context, x *command.Exec) error {
	ref := x.Command.GetStart()
	if err := h.forService("start", ref); err != nil {
		return err
	}
	return detachOnAccept(ctx, x, func(ctx context.Context, accepted func()) (*fleetv1.DeploymentStatus, error) {
		if ref.GetService() != "" {
			st, err := h.cfg.Services.StartService(ctx, ref.GetName(), ref.GetService(), accepted)
			return st, underRef("start", err)
		}
		st, err := h.cfg.Deployments.Start(ctx, ref.GetName(), accepted)
		return st, under("start", err, "name")
	})
}

func (h handlers) restart(ctx context.Context, x *command.Exec) error {
	ref := x.Command.GetRestart()
	if err := h.forService("restart", ref); err != nil {
		return err
	}
	return detachOnAccept(ctx, x, func(ctx context.Context, accepted func()) (*fleetv1.DeploymentStatus, error) {
		if ref.GetService() != "" {
			st, err := h.cfg.Services.RestartService(ctx, ref.GetName(), ref.GetService(), accepted)
			return st, underRef("restart", err)
		}
		st, err := h.cfg.Deployments.Restart(ctx, ref.GetName(), accepted)
		return st, under("restart", err, "name")
	})
}

func (h handlers) remove(ctx context.Context, x *command.Exec) error {
	rm := x.Command.GetRemove()
	if !rm.GetRemoveVolumes() {
		return under("remove", h.cfg.Deployments.Remove(ctx, rm.GetName(), rm.GetRemoveImage()), "name")
	}
	if err := h.services("remove"); err != nil {
		return err
	}
	return under("remove", h.cfg.Services.RemoveWith(ctx, rm.GetName(), rm.GetRemoveImage(), true), "name")
}

// forService refuses a command naming a service when nothing serves them.
func (h handlers) forService(verb string, ref *fleetv1.DeploymentRef) error {
	if ref.GetService() == "" {
		return nil
	}
	return h.services(verb)
}

func (h handlers) services(verb string) error {
	if h.cfg.Services != nil {
		return nil
	}
	return fmt.Errorf("%w: %s of one service or of an application's volumes is not served by this agent", errdefs.ErrUnsupported, verb)
}

// underRef puts the fields of a DeploymentRef (name, service) under the
// verb's body.
func underRef(body string, err error) error {
	if fe, ok := errors.AsType[*errdefs.FieldError](err); ok && (fe.Field == "name" || fe.Field == "service") {
		fe.Field = body + "." + fe.Field
	}
	return err
}

func (h handlers) setCredentials(ctx context.Context, x *command.Exec) error {
	body := x.Command.GetSetCredentials()
	list := body.GetCredentials()
	switch {
	case len(body.GetSealed()) > 0 && len(list) > 0:
		return errdefs.Invalid("setCredentials", "send either credentials or sealed, not both")
	case len(body.GetSealed()) > 0:
		raw, err := h.cfg.OpenSealed(body.GetSealed())
		if err != nil {
			return errdefs.Invalid("setCredentials.sealed", "%v", err)
		}
		inner := new(fleetv1.SetCredentials)
		if err := protojson.Unmarshal(raw, inner); err != nil {
			return errdefs.Invalid("setCredentials.sealed", "the sealed content is not the JSON of {\"credentials\": [...]}: %v", err)
		}
		list = inner.GetCredentials()
	case h.cfg.RequireSealed:
		return &errdefs.FieldError{Field: "setCredentials.credentials", Kind: errdefs.ErrPolicyDenied,
			Msg: "this gateway accepts only sealed credentials: seal the list to the publicKey in its birth and send it as setCredentials.sealed (agent setting --credentials-require-sealed)"}
	}
	return under("setCredentials", h.cfg.Credentials.Set(ctx, list), "")
}

func (h handlers) deleteCredentials(ctx context.Context, x *command.Exec) error {
	regs := x.Command.GetDeleteCredentials().GetRegistries()
	return under("deleteCredentials", h.cfg.Credentials.Delete(ctx, regs), "")
}

func (h handlers) checkRegistry(ctx context.Context, x *command.Exec) error {
	rc, err := h.cfg.Credentials.Check(ctx, x.Command.GetCheckRegistry().GetImage())
	x.Reply.RegistryCheck = rc
	return under("checkRegistry", err, "image")
}

// under puts the field an input error names under the verb's body field
// (body.field), in place. With only set, other fields are left alone: they
// are not fields of this command (a start that rolls out again may fail on
// the stored spec).
func under(body string, err error, only string) error {
	fe, ok := errors.AsType[*errdefs.FieldError](err)
	if ok && (only == "" || fe.Field == only) {
		fe.Field = body + "." + fe.Field
	}
	return err
}

type outcome struct {
	st  *fleetv1.DeploymentStatus
	err error
}

// detachOnAccept runs f, which calls accepted once it has accepted work
// that takes long. If f returns before that, its outcome is the reply. Once
// f has accepted, the handler detaches (ACCEPTED is published and the
// executor takes the next command) and the final reply follows when f
// returns.
func detachOnAccept(ctx context.Context, x *command.Exec, f func(ctx context.Context, accepted func()) (*fleetv1.DeploymentStatus, error)) error {
	done := make(chan outcome, 1)
	acc := make(chan struct{}, 1)
	go func() {
		var o outcome
		defer func() {
			if v := recover(); v != nil { // as the executor does for handlers
				o.err = fmt.Errorf("internal error while executing the command: %v", v)
			}
			done <- o
		}()
		o.st, o.err = f(ctx, func() {
			select {
			case acc <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case o := <-done:
		select {
		case <-acc:
		default:
			x.Reply.Status = o.st
			return o.err
		}
		finish := x.Detach()
		x.Reply.Status = o.st
		finish(o.err)
		return nil
	case <-acc:
	}
	finish := x.Detach()
	go func() {
		o := <-done
		x.Reply.Status = o.st
		finish(o.err)
	}()
	return nil
}
