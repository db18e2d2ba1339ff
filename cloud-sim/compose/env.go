package compose

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
)

// env is a service's environment: its env_files in order, then its
// environment entries over them. An entry without a value takes it from
// Options.Env, or is left out with a warning.
func (t *translation) env(p string, s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for i, f := range s.EnvFiles {
		vars, err := t.envFile(f)
		if err != nil {
			t.refuse(fmt.Sprintf("%s.env_file[%d]", p, i), "%v", err)
			continue
		}
		maps.Copy(out, vars)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Environment)) {
		v := s.Environment[k]
		if v == nil {
			if ev, ok := t.opts.Env[k]; ok {
				out[k] = ev
				continue
			}
			t.warn(p+".environment."+k, "left out: it has no value and is not in the given environment")
			continue
		}
		out[k] = *v
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// envFile reads one env_file under Options.Dir through an os.Root: an
// absolute path, .. or a symlink out of the directory is refused.
func (t *translation) envFile(f types.EnvFile) (map[string]string, error) {
	if t.opts.Dir == "" {
		return nil, errors.New("not supported here: the file is translated without a directory to read it from; put the variables under environment (or use cloud-sim deploy -f, which reads env files beside the Compose file)")
	}
	if f.Format != "" {
		return nil, fmt.Errorf("format %q is not supported", f.Format)
	}
	root, err := os.OpenRoot(t.opts.Dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	r, err := root.Open(f.Path)
	if errors.Is(err, fs.ErrNotExist) && !bool(f.Required) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%q cannot be read under %s: %w", f.Path, t.opts.Dir, err)
	}
	defer r.Close()
	vars, err := dotenv.ParseWithLookup(r, func(k string) (string, bool) { v, ok := t.opts.Env[k]; return v, ok })
	if err != nil {
		return nil, fmt.Errorf("%q: %w", f.Path, err)
	}
	return vars, nil
}
