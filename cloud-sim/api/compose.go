package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/fleet-agent/fleet/cloud-sim/compose"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// composeField is the request field that holds a Compose file, named in
// its errors.
const composeField = "compose"

// composeCommand translates a Compose file into the spec of cmd, a deploy
// (also when cmd has no body) or a prefetch: the spec may give only the
// deployment's name (else the file's) and its revision. It returns the
// translation's warnings. The server has no directory: env_file is refused.
func composeCommand(ctx context.Context, cmd *fleetv1.Command, file string, env map[string]string) ([]string, error) {
	var spec *fleetv1.DeploymentSpec
	field := "command.deploy.spec"
	switch {
	case cmd.GetBody() == nil:
		cmd.Body = &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{}}
	case cmd.GetDeploy() != nil:
		spec = cmd.GetDeploy().GetSpec()
	case cmd.GetPrefetch() != nil:
		spec, field = cmd.GetPrefetch().GetSpec(), "command.prefetch.spec"
	default:
		return nil, errdefs.Invalid(composeField, "goes with a deploy or prefetch command (or none, for a deploy), not %s", cmd.ProtoReflect().WhichOneof(cmd.ProtoReflect().Descriptor().Oneofs().ByName("body")).JSONName())
	}
	res, err := translateCompose(ctx, spec, field, file, env)
	if err != nil {
		return nil, err
	}
	if cmd.GetPrefetch() != nil {
		cmd.GetPrefetch().Spec = res.Spec
	} else {
		cmd.GetDeploy().Spec = res.Spec
	}
	return res.Warnings, nil
}

// translateCompose translates file with the name and revision of spec
// (nil: none), refusing any other field of spec set beside the file.
func translateCompose(ctx context.Context, spec *fleetv1.DeploymentSpec, field, file string, env map[string]string) (*compose.Result, error) {
	if rest := setFields(spec); len(rest) > 0 {
		return nil, errdefs.Invalid(field+"."+rest[0], "is set beside a Compose file: with compose, the spec gives only name and revision, the file the rest")
	}
	res, err := compose.Translate(ctx, []byte(file), compose.Options{Name: spec.GetName(), Revision: spec.GetRevision(), Env: env})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", composeField, err)
	}
	return res, nil
}

// setFields names the fields of spec set besides name and revision.
func setFields(spec *fleetv1.DeploymentSpec) []string {
	if spec == nil {
		return nil
	}
	rest := proto.Clone(spec).(*fleetv1.DeploymentSpec)
	rest.Name, rest.Revision = "", 0
	var out []string
	rest.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		out = append(out, fd.JSONName())
		return true
	})
	return out
}

// composeRollout translates a rollout's Compose file into its deployment,
// which may give only the name and revision.
func composeRollout(ctx context.Context, s *RolloutSpec) ([]string, error) {
	spec := new(fleetv1.DeploymentSpec)
	if len(s.Deployment) > 0 {
		if err := protojson.Unmarshal(s.Deployment, spec); err != nil {
			return nil, errdefs.Invalid("deployment", "is not a DeploymentSpec: %v", err)
		}
	}
	res, err := translateCompose(ctx, spec, "deployment", s.Compose, s.ComposeEnv)
	if err != nil {
		return nil, err
	}
	raw, err := protojson.Marshal(res.Spec)
	if err != nil {
		return nil, err
	}
	s.Deployment = json.RawMessage(raw)
	return res.Warnings, nil
}

// composeErrors lists a refused Compose file's refusals, "path: message".
func composeErrors(err error) []string {
	if ce, ok := errors.AsType[*compose.Error](err); ok {
		return ce.Lines()
	}
	return nil
}
