// Package trust checks an image against the gateway's image trust policy
// before a container is created from it: cosign signatures verified
// offline with the tenant's public keys, or a digest allow-list.
//
// The policy is a YAML file given to the agent (--image-trust-policy), the
// same for every gateway of a tenant and provisioned with them, so a
// compromised cloud or registry cannot weaken it:
//
//	rules:
//	  - images: [registry.acme.example/prod/]   # scopes, chosen as credentials are
//	    publicKeys: [/etc/fleet-agent/cosign.pub]
//	  - images: [registry.acme.example/tools/probe]
//	    digests: ["sha256:4f2a…"]
//	  - images: ["127.0.0.1:5000"]
//	    insecureAcceptAnything: true
//
// An image is covered by the rule with the longest matching scope (a
// registry host, optionally with a repository prefix, matched at a path
// boundary; "*" covers every image). Under a rule, an image is trusted when
// its digest is listed in digests, or when a cosign signature of its
// digest verifies with one of publicKeys, or when the rule says
// insecureAcceptAnything. An image no rule covers is refused.
package trust

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/internal/credential"
)

// Policy is a parsed trust policy.
type Policy struct {
	rules  []rule
	scopes []credential.Key
	ruleOf []int // the rule of each scope
	any    int   // index of the "*" rule, or -1
}

type rule struct {
	field    string // rules[i], for messages
	keys     []publicKey
	digests  map[string]bool
	anything bool
}

type publicKey struct {
	name string // the file it came from
	key  crypto.PublicKey
}

// file is the YAML document.
type file struct {
	Rules []struct {
		Images                 []string `yaml:"images"`
		PublicKeys             []string `yaml:"publicKeys"`
		Digests                []string `yaml:"digests"`
		InsecureAcceptAnything bool     `yaml:"insecureAcceptAnything"`
	} `yaml:"rules"`
}

// Load reads and checks a policy file. Relative publicKeys paths are
// relative to the policy file. Errors name the rule and field at fault.
func Load(path string) (*Policy, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(raw, filepath.Dir(path))
}

// Parse parses a policy document; dir resolves relative key paths.
func Parse(raw []byte, dir string) (*Policy, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%v (keys are rules[].images, publicKeys, digests, insecureAcceptAnything)", err)
	}
	if len(f.Rules) == 0 {
		return nil, errors.New("rules: at least one rule is required; a policy without rules would refuse every image")
	}
	p := &Policy{any: -1}
	for i, fr := range f.Rules {
		r := rule{field: fmt.Sprintf("rules[%d]", i), digests: map[string]bool{}, anything: fr.InsecureAcceptAnything}
		if len(fr.Images) == 0 {
			return nil, fmt.Errorf("%s.images: list the image scopes the rule covers, e.g. registry.example.com/team/ or \"*\"", r.field)
		}
		if !r.anything && len(fr.PublicKeys) == 0 && len(fr.Digests) == 0 {
			return nil, fmt.Errorf("%s: set publicKeys (cosign public keys), digests (an allow-list), or insecureAcceptAnything: true", r.field)
		}
		for j, k := range fr.PublicKeys {
			if !filepath.IsAbs(k) {
				k = filepath.Join(dir, k)
			}
			key, err := readKey(k)
			if err != nil {
				return nil, fmt.Errorf("%s.publicKeys[%d]: %w", r.field, j, err)
			}
			r.keys = append(r.keys, publicKey{name: k, key: key})
		}
		for j, d := range fr.Digests {
			if !validDigest(d) {
				return nil, fmt.Errorf("%s.digests[%d]: %q is not a digest; write sha256:<64 hex digits>", r.field, j, d)
			}
			r.digests[d] = true
		}
		for j, img := range fr.Images {
			if err := p.addScope(img, len(p.rules)); err != nil {
				return nil, fmt.Errorf("%s.images[%d]: %w", r.field, j, err)
			}
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

// addScope adds an image scope of rule i; each scope belongs to one rule.
func (p *Policy) addScope(s string, i int) error {
	if s == "*" {
		if p.any >= 0 {
			return errors.New(`"*" is already covered by another rule`)
		}
		p.any = i
		return nil
	}
	k, err := credential.ParseRegistry(s)
	if err == nil && k.Prefix != "" {
		_, err = credential.ImageKey(k.Host + "/" + k.Prefix)
	}
	if err != nil || k.Host == "" {
		return fmt.Errorf("%q is not an image scope; write a registry host with an optional repository prefix, e.g. registry.example.com/team/, or \"*\"", s)
	}
	for _, have := range p.scopes {
		if have == k {
			return fmt.Errorf("%q is already covered by another rule", s)
		}
	}
	p.scopes = append(p.scopes, k)
	p.ruleOf = append(p.ruleOf, i)
	return nil
}

// match returns the rule covering image, or nil.
func (p *Policy) match(image string) (*rule, error) {
	ik, err := credential.ImageKey(image)
	if err != nil {
		return nil, err
	}
	if i := credential.Select(p.scopes, ik); i >= 0 {
		return &p.rules[p.ruleOf[i]], nil
	}
	if p.any >= 0 {
		return &p.rules[p.any], nil
	}
	return nil, nil
}

func readKey(path string) (crypto.PublicKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: no PEM \"PUBLIC KEY\" block (cosign public-key format, e.g. cosign.pub)", path)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch key.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey, *rsa.PublicKey:
		return key, nil
	}
	return nil, fmt.Errorf("%s: unsupported key type %T; use ECDSA, Ed25519 or RSA", path, key)
}

func validDigest(d string) bool {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	return strings.Trim(hex, "0123456789abcdef") == ""
}
