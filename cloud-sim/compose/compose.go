// Package compose translates a Compose file (the Compose specification, as
// Docker Compose reads it, parsed by compose-go) into a protocol
// DeploymentSpec with services: an application of several containers that
// a gateway runs and updates together.
//
// Every field of the file is checked against the translator's table
// (Fields; docs/compose.md is generated from it): a field the agent cannot
// honour is refused with its path, never dropped, and all refusals are
// reported at once (*Error); a few that change nothing a gateway runs are
// left out with a warning.
//
// ${VAR} interpolation reads only Options.Env: never the environment of
// the process that translates, nor a .env file. An env_file is read only
// under Options.Dir, through an os.Root, so no path leaves it.
package compose

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// MaxSize bounds a Compose file's size.
const MaxSize = 1 << 20

// Options are the translation's inputs besides the file.
type Options struct {
	// Name is the deployment's name; empty: the file's top-level name.
	Name string
	// Revision is the deployment's revision, 1 or more (Compose has none).
	Revision int64
	// Env is the only source of ${VAR} interpolation and of environment
	// entries without a value. Nil: none.
	Env map[string]string
	// Dir is the directory an env_file is read from (relative paths only,
	// never leaving it). Empty: env_file is refused.
	Dir string
}

// Result is a translation: the spec, and the fields left out.
type Result struct {
	Spec     *fleetv1.DeploymentSpec
	Warnings []string
}

// Refusal is a field of the file the translation refuses: its path in the
// file (e.g. services.web.build) and why, with the fix.
type Refusal struct {
	Path string `json:"path"`
	Msg  string `json:"message"`
}

func (r Refusal) String() string { return r.Path + ": " + r.Msg }

// Error lists every refusal of a file. It is an invalid argument
// (errdefs.ErrInvalidArgument).
type Error struct {
	Refusals []Refusal
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Refusals))
	for i, r := range e.Refusals {
		lines[i] = r.String()
	}
	return "the Compose file cannot be deployed: " + strings.Join(lines, "; ")
}

// Is makes an *Error an errdefs.ErrInvalidArgument.
func (e *Error) Is(target error) bool { return target == errdefs.ErrInvalidArgument }

// Lines returns the refusals as "path: message".
func (e *Error) Lines() []string {
	out := make([]string, len(e.Refusals))
	for i, r := range e.Refusals {
		out[i] = r.String()
	}
	return out
}

// placeholderName lets the load go on when the file has no name, so that
// every other refusal is reported with the missing name's.
const placeholderName = "unnamed"

// Translate parses a Compose file and translates it. The error is an
// *Error listing every refused field, or a parse error.
func Translate(ctx context.Context, file []byte, opts Options) (*Result, error) {
	c := &checker{}
	if len(file) > MaxSize {
		c.refuse("(file)", "is %d bytes; the most is %d", len(file), MaxSize)
		return nil, c.err()
	}
	raw, err := prescan(c, file)
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		if s, ok := raw["name"].(string); ok {
			name = interpolateName(s, opts.Env)
		}
	}
	if name == "" {
		c.refuse("name", "the deployment needs a name: a top-level name, or give one (cloud-sim deploy --name, the API's command.deploy.spec.name)")
		name = placeholderName
	} else if err := topic.CheckDeploymentName(name); err != nil {
		c.refuse("name", "%v", err)
		name = placeholderName
	}
	if opts.Revision < 1 {
		c.refuse("revision", "the deployment needs a revision, 1 or more and higher than the one deployed (cloud-sim deploy --revision, the API's command.deploy.spec.revision)")
	}
	if readsFiles(raw) {
		return nil, c.err()
	}
	unset := map[string]bool{}
	model, err := loadModel(ctx, file, name, opts, func(v string) { unset[v] = true })
	if err != nil {
		return nil, parseError(err)
	}
	for _, v := range slices.Sorted(maps.Keys(unset)) {
		c.warn("${"+v+"}", "is not in the given environment: replaced by an empty string")
	}
	c.walk(model, "", "")
	p, err := loadProject(ctx, file, name, opts)
	if err != nil {
		return nil, parseError(err)
	}
	t := &translation{checker: c, p: p, opts: opts}
	spec := t.spec(name, opts.Revision)
	if len(c.refusals) > 0 {
		return nil, c.err()
	}
	return &Result{Spec: spec, Warnings: c.warnings}, nil
}

// prescan reads the file as plain YAML to refuse, before compose-go loads
// it, what would make it read other files (include, extends.file), and to
// warn about version, which the loader drops.
func prescan(c *checker, file []byte) (map[string]any, error) {
	var raw map[string]any
	if err := yaml.Unmarshal(file, &raw); err != nil {
		return nil, &Error{Refusals: []Refusal{{Path: "(file)", Msg: "is not YAML: " + err.Error()}}}
	}
	if raw == nil {
		return nil, &Error{Refusals: []Refusal{{Path: "(file)", Msg: "is empty: a Compose file has services"}}}
	}
	if _, ok := raw["version"]; ok {
		c.warn("version", "ignored: obsolete in the Compose specification")
	}
	if _, ok := raw["include"]; ok {
		c.refuse("include", "not supported: it reads other files; merge them into one file")
	}
	services, _ := raw["services"].(map[string]any)
	for _, name := range slices.Sorted(maps.Keys(services)) {
		s, _ := services[name].(map[string]any)
		if ext, ok := s["extends"].(map[string]any); ok {
			if _, ok := ext["file"]; ok {
				c.refuse("services."+name+".extends.file", "not supported: it reads another file; extend a service of this file, or copy it in")
			}
		}
	}
	return raw, nil
}

// readsFiles tells whether the file would make compose-go read others;
// the prescan refused that, and the load must not start.
func readsFiles(raw map[string]any) bool {
	if _, ok := raw["include"]; ok {
		return true
	}
	services, _ := raw["services"].(map[string]any)
	for _, s := range services {
		s, _ := s.(map[string]any)
		if ext, ok := s["extends"].(map[string]any); ok {
			if _, ok := ext["file"]; ok {
				return true
			}
		}
	}
	return false
}

// interpolateName resolves ${VAR} in the top-level name from env only;
// a name that does not resolve is left as written, and refused.
func interpolateName(s string, env map[string]string) string {
	out, err := template.Substitute(s, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		return s
	}
	return out
}

func (c *checker) err() error {
	if len(c.refusals) == 0 {
		return nil
	}
	return &Error{Refusals: slices.Clone(c.refusals)}
}

// parseError is a file compose-go cannot load (bad YAML, schema).
func parseError(err error) error {
	return &Error{Refusals: []Refusal{{Path: "(file)", Msg: err.Error()}}}
}

// details is the file for compose-go: in memory, with only opts.Env.
func details(file []byte, opts Options) types.ConfigDetails {
	env := maps.Clone(opts.Env)
	if env == nil {
		env = map[string]string{}
	}
	wd := opts.Dir
	if wd == "" {
		wd = "/nonexistent"
	}
	return types.ConfigDetails{WorkingDir: wd, ConfigFiles: []types.ConfigFile{{Filename: "compose.yaml", Content: file}}, Environment: env}
}

// noFiles refuses every file compose-go would read (include, extends.file
// that the prescan missed): resource loaders are tried before its own.
type noFiles struct{}

func (noFiles) Accept(string) bool { return true }
func (noFiles) Load(_ context.Context, p string) (string, error) {
	return "", fmt.Errorf("%s: a Compose file is translated without reading other files", p)
}
func (noFiles) Dir(p string) string { return p }

// baseOptions are the loader's options; unset hears of every variable
// interpolated without a value (nil: none).
func baseOptions(name string, unset func(string)) func(*loader.Options) {
	return func(o *loader.Options) {
		o.SetProjectName(name, true)
		o.ResolvePaths = false
		o.SkipResolveEnvironment = true
		o.SkipResolveLabels = true
		// The translation checks what it needs, each with its path.
		o.SkipConsistencyCheck = true
		o.ResourceLoaders = []loader.ResourceLoader{noFiles{}}
		o.Interpolate.Substitute = substitute(unset)
	}
}

// substitute is compose-go's interpolation without its logging of unset
// variables on the process's logger (the translation is a library's): they
// go to unset instead.
func substitute(unset func(string)) func(string, template.Mapping) (string, error) {
	return func(s string, m template.Mapping) (string, error) {
		return template.SubstituteWithOptions(s, m, template.WithoutLogging, template.WithReplacementFunction(
			func(sub string, m template.Mapping, cfg *template.Config) (string, error) {
				v, ok, err := template.DefaultReplacementAppliedFunc(sub, m, cfg)
				if !ok && err == nil && unset != nil {
					unset(strings.Trim(sub, "${}"))
				}
				return v, err
			}))
	}
}

// loadModel is the file as written (merged, interpolated, in canonical
// form), without the loader's defaults: what the table checks.
func loadModel(ctx context.Context, file []byte, name string, opts Options, unset func(string)) (map[string]any, error) {
	return loader.LoadModelWithContext(ctx, details(file, opts), baseOptions(name, unset), func(o *loader.Options) {
		o.SkipNormalization = true
		o.SkipDefaultValues = true
	})
}

func loadProject(ctx context.Context, file []byte, name string, opts Options) (*types.Project, error) {
	return loader.LoadWithContext(ctx, details(file, opts), baseOptions(name, nil))
}
