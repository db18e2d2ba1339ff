package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/compose"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// composeOpts are the flags that go with a Compose file.
type composeOpts struct {
	revision int64
	name     string
	env      []string
	envFiles []string
	file     string // rollout create --compose
}

// composeFlags adds them to a verb that reads a spec with -f.
func (v *verb) composeFlags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.Int64Var(&v.compose.revision, "revision", 0, "with a Compose file: the deployment's revision (1 or more, higher than the one deployed)")
	fs.StringVar(&v.compose.name, "name", "", "with a Compose file: the deployment's name (else the file's top-level name)")
	fs.StringArrayVar(&v.compose.env, "env", nil, "with a Compose file: `KEY=VALUE` for its ${KEY} (repeatable); the CLI's own environment is never read")
	fs.StringArrayVar(&v.compose.envFiles, "env-file", nil, "with a Compose file: a `FILE` of KEY=VALUE lines for its ${KEY} (repeatable; --env wins)")
}

func (o composeOpts) given() bool {
	return o.revision != 0 || o.name != "" || len(o.env) > 0 || len(o.envFiles) > 0
}

// readSpec reads -f: a protocol DeploymentSpec, or a Compose file (a
// top-level services without revision nor image), which it translates
// here, so that env_file is read beside it.
func (v *verb) readSpec() (*fleetv1.DeploymentSpec, error) {
	data, err := v.readInput(v.file)
	if err != nil {
		return nil, err
	}
	if !isCompose(data) {
		if v.compose.given() {
			return nil, Usagef("--revision, --name, --env and --env-file go with a Compose file; %s is a deployment spec", v.file)
		}
		spec := new(fleetv1.DeploymentSpec)
		return spec, v.readProto("a deployment spec", spec)
	}
	return v.translate(v.file, data, "", 0)
}

// translate translates a Compose file with the compose flags; name and
// revision, when the flags give none.
func (v *verb) translate(path string, data []byte, name string, revision int64) (*fleetv1.DeploymentSpec, error) {
	env, err := v.composeEnv()
	if err != nil {
		return nil, err
	}
	opts := compose.Options{Name: or(v.compose.name, name), Revision: revision, Env: env}
	if v.compose.revision != 0 {
		opts.Revision = v.compose.revision
	}
	if path != "-" {
		opts.Dir = filepath.Dir(path)
	}
	res, err := compose.Translate(context.Background(), data, opts)
	if ce, ok := errors.AsType[*compose.Error](err); ok {
		return nil, fmt.Errorf("%s cannot be deployed (docs/compose.md):\n  %s", path, strings.Join(ce.Lines(), "\n  "))
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(v.env.Stderr, "warning: %s: %s\n", path, w)
	}
	return res.Spec, nil
}

// composeEnv is the variables of --env-file and --env, in that order.
func (v *verb) composeEnv() (map[string]string, error) {
	env := map[string]string{}
	for _, f := range v.compose.envFiles {
		r, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		vars, err := dotenv.ParseWithLookup(r, func(string) (string, bool) { return "", false })
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("--env-file %s: %w", f, err)
		}
		maps.Copy(env, vars)
	}
	for _, kv := range v.compose.env {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, Usagef("--env %q: write KEY=VALUE", kv)
		}
		env[k] = val
	}
	return env, nil
}

// isCompose tells a Compose file from a deployment spec: it has services
// but neither the spec's revision nor its image.
func isCompose(data []byte) bool {
	var top map[string]any
	if yaml.Unmarshal(data, &top) != nil {
		return false
	}
	_, services := top["services"]
	_, revision := top["revision"]
	_, image := top["image"]
	return services && !revision && !image
}

// readInput reads a file, or stdin for -.
func (v *verb) readInput(path string) ([]byte, error) {
	if path == "" {
		return nil, Usagef("-f FILE is required")
	}
	if path == "-" {
		data, err := io.ReadAll(v.env.Stdin)
		if err != nil {
			return nil, err
		}
		v.env.Stdin = strings.NewReader(string(data)) // readProto reads it again
		return data, nil
	}
	return os.ReadFile(path)
}

// composeRollout puts the translation of --compose into a rollout spec's
// deployment, whose name and revision it keeps.
func (v *verb) composeRollout(spec *api.RolloutSpec) error {
	data, err := v.readInput(v.compose.file)
	if err != nil {
		return err
	}
	dep := new(fleetv1.DeploymentSpec)
	if len(spec.Deployment) > 0 {
		if err := protojson.Unmarshal(spec.Deployment, dep); err != nil {
			return fmt.Errorf("%s: deployment: %w", v.file, err)
		}
	}
	ds, err := v.translate(v.compose.file, data, dep.GetName(), dep.GetRevision())
	if err != nil {
		return err
	}
	if spec.Deployment, err = protojson.Marshal(ds); err != nil {
		return err
	}
	return nil
}

// serviceRows lists an application's services under its deployment in the
// gateway's table; a single container's one service is not repeated.
func serviceRows(w io.Writer, d *api.Deployment) {
	if len(d.Services) == 0 || len(d.Services) == 1 && d.Services[0].Name == d.Name {
		return
	}
	for _, s := range d.Services {
		img := s.Image
		if s.Digest != "" {
			img += "@" + s.Digest
		}
		msg := s.Message
		if s.ExitCode != 0 || s.OOMKilled {
			msg = strings.TrimSpace(fmt.Sprintf("exit %d%s %s", s.ExitCode, map[bool]string{true: " (out of memory)"}[s.OOMKilled], msg))
		}
		fmt.Fprintf(w, "  ↳ %s\t\t%s\t%s\t%s\t%s\n", s.Name, s.Phase, or(s.Health, "-"), or(img, "-"), msg)
	}
}
