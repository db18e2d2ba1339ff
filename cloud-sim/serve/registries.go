package serve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/cloud-sim/registry"
)

// RegistriesFile is the registries file of `cloud-sim serve --registries`:
//
//	registries:
//	  - name: private              # a name for logs and the CLI
//	    listen: 127.0.0.1:5000     # default 127.0.0.1:0 (a free port)
//	    auth: basic                # anonymous | basic | bearer | ecr
//	    users: {demo: s3cret}      # basic and bearer: username -> password
//	    ecr:                       # auth: ecr
//	      region: us-east-1
//	      tokenTTL: 12h
//	      keys: {AKIAEXAMPLE: secret-access-key}
//	    images:                    # pushed at start
//	      - {repo: demo/web, tag: "1.0", sample: web, message: hello}
type RegistriesFile struct {
	Registries []RegistrySpec `yaml:"registries"`
}

// RegistrySpec is one emulated registry.
type RegistrySpec struct {
	Name   string            `yaml:"name"`
	Listen string            `yaml:"listen"`
	Auth   string            `yaml:"auth"`
	Users  map[string]string `yaml:"users"`
	ECR    struct {
		Region   string            `yaml:"region"`
		TokenTTL time.Duration     `yaml:"tokenTTL"`
		Keys     map[string]string `yaml:"keys"`
	} `yaml:"ecr"`
	Images []ImageSpec `yaml:"images"`
}

// ImageSpec is a sample image to push. Sample "web" is cloud-sim's own
// static binary serving HTTP on port 8080: GET / answers Message.
type ImageSpec struct {
	Repo    string `yaml:"repo"`
	Tag     string `yaml:"tag"`
	Sample  string `yaml:"sample"`
	Message string `yaml:"message"`
}

// LoadRegistries starts the registries of the file at path and pushes
// their images.
func LoadRegistries(ctx context.Context, path string, log *slog.Logger) (map[string]*RunningRegistry, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("registries file: %w", err)
	}
	var f RegistriesFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("registries file %s: %w", path, err)
	}
	return StartRegistries(ctx, f.Registries, log)
}

// StartRegistries starts registries and pushes their images; on error the
// ones started are returned too, for the caller to close.
func StartRegistries(ctx context.Context, specs []RegistrySpec, log *slog.Logger) (map[string]*RunningRegistry, error) {
	out := map[string]*RunningRegistry{}
	for i, spec := range specs {
		field := fmt.Sprintf("registries[%d]", i)
		if spec.Name == "" {
			return out, fmt.Errorf("%s.name is required", field)
		}
		if _, dup := out[spec.Name]; dup {
			return out, fmt.Errorf("%s.name %q is used twice", field, spec.Name)
		}
		var auth registry.Auth
		switch spec.Auth {
		case "", "anonymous":
		case "basic":
			auth = registry.Basic{Users: spec.Users}
		case "bearer":
			auth = &registry.Bearer{Users: spec.Users}
		case "ecr":
			auth = &registry.ECR{Keys: spec.ECR.Keys, Region: spec.ECR.Region, TokenTTL: spec.ECR.TokenTTL}
		default:
			return out, fmt.Errorf("%s.auth %q: use anonymous, basic, bearer or ecr", field, spec.Auth)
		}
		if (spec.Auth == "basic" || spec.Auth == "bearer") && len(spec.Users) == 0 {
			return out, fmt.Errorf("%s.users: auth %s needs at least one user", field, spec.Auth)
		}
		srv, err := registry.Start(registry.Config{Addr: spec.Listen, Auth: auth, Logger: log})
		if err != nil {
			return out, fmt.Errorf("%s (%s): %w", field, spec.Name, err)
		}
		r := &RunningRegistry{Name: spec.Name, Server: srv}
		out[spec.Name] = r
		for j, img := range spec.Images {
			ref, err := PushSample(ctx, srv, img)
			if err != nil {
				return out, fmt.Errorf("%s.images[%d]: %w", field, j, err)
			}
			r.Images = append(r.Images, ref)
		}
	}
	return out, nil
}

// PushSample builds a sample image and pushes it to srv; it returns the
// image reference.
func PushSample(ctx context.Context, srv *registry.Server, img ImageSpec) (string, error) {
	if img.Repo == "" {
		return "", errors.New("repo is required")
	}
	if img.Tag == "" {
		img.Tag = "latest"
	}
	if img.Sample != "web" {
		return "", fmt.Errorf("sample %q: the only sample is web", img.Sample)
	}
	msg := img.Message
	if msg == "" {
		msg = "hello from " + img.Repo + ":" + img.Tag
	}
	image, err := registry.SelfImage([]string{"sample-web"}, []string{"PORT=8080", "MESSAGE=" + msg})
	if err != nil {
		return "", err
	}
	if _, err := srv.Push(ctx, img.Repo, img.Tag, image); err != nil {
		return "", err
	}
	return srv.Host + "/" + img.Repo + ":" + img.Tag, nil
}
