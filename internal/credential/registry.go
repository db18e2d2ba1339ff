// Package credential is the registry credential code that gateways and the
// cloud share: registry scopes normalised as the Docker CLI normalises them
// and the longest matching prefix chosen (Key, Select); validation, kinds
// and fingerprints of credentials; ECR tokens; a registry check that reads
// manifests only (Checker); and the keys that encrypt credentials at rest
// and seal them to a gateway (Keys, Seal). It knows nothing of MQTT or HTTP
// APIs: the agent's keychain and the controller call it.
package credential

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/distribution/reference"
)

// DockerHub is the canonical host of Docker Hub.
const DockerHub = "docker.io"

var hubAliases = map[string]bool{"": true, "docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

// Key is a normalised credential scope: a registry host and an optional
// repository path prefix ("team/" or "team/app").
type Key struct {
	Host   string
	Prefix string
}

func (k Key) String() string {
	if k.Prefix == "" {
		return k.Host
	}
	return k.Host + "/" + k.Prefix
}

// ParseRegistry normalises a credential's registry field: a blank value,
// docker.io, index.docker.io and registry-1.docker.io all mean Docker Hub;
// a scheme (https://) and a trailing "/v1/" or "/v2/" are dropped; the rest
// after the host is a repository prefix.
//
// The host must be host[:port] as an image reference names it (a DNS name,
// an IPv4 address or a bracketed IPv6 address; a port from 1 to 65535) and
// each prefix component a repository path component: the gateway names a
// directory of the engine's certs.d after the host, so nothing that reads
// as a path ("..", "/", "\") gets through.
func ParseRegistry(s string) (Key, error) {
	s = strings.TrimSpace(s)
	for _, scheme := range []string{"https://", "http://"} {
		s = strings.TrimPrefix(s, scheme)
	}
	host, prefix, _ := strings.Cut(s, "/")
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "v1" || prefix == "v2" {
		prefix = ""
	}
	host = strings.ToLower(host)
	if hubAliases[host] {
		host = DockerHub
	}
	if err := checkHost(host); err != nil {
		return Key{}, fmt.Errorf("registry %q: %w; send a registry host[:port] with an optional repository prefix, e.g. registry.example.com:5000/team/", s, err)
	}
	if prefix != "" {
		for c := range strings.SplitSeq(prefix, "/") {
			if !pathComponent().MatchString(c) {
				return Key{}, fmt.Errorf("registry %q: the repository prefix component %q is not a repository name component (lower-case letters and digits separated by '.', '_', '__' or '-'); send a registry host[:port] with an optional repository prefix, e.g. registry.example.com:5000/team/", s, c)
			}
		}
	}
	return Key{Host: host, Prefix: prefix}, nil
}

// pathComponent is one component of a repository path, as in
// github.com/distribution/reference.
var pathComponent = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`) })

// hostPort is a registry host with an optional port, as in
// github.com/distribution/reference.
var hostPort = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^(?:` + reference.DomainRegexp.String() + `)$`) })

// checkHost reports whether host is host[:port] as an image reference
// names a registry: a DNS name, an IPv4 address or a bracketed IPv6
// address, with an optional port from 1 to 65535.
func checkHost(host string) error {
	if !hostPort().MatchString(host) {
		return fmt.Errorf("the host %q is not a DNS name, IPv4 address or [IPv6] address with an optional :port", host)
	}
	name, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		name, port = host[:i], host[i+1:]
	}
	if strings.HasPrefix(name, "[") {
		if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err != nil {
			return fmt.Errorf("the host %q is not an IPv6 address: %w", name, err)
		}
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("the port %q is not a number from 1 to 65535", port)
		}
	}
	return nil
}

// ImageKey returns the host and repository path of an image reference, as
// the Docker CLI normalises it ("nginx" is docker.io/library/nginx).
func ImageKey(image string) (Key, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return Key{}, err
	}
	return Key{Host: reference.Domain(named), Prefix: reference.Path(named)}, nil
}

// Matches reports whether a credential scope covers an image: same host,
// and the image's repository path starts with the prefix at a path
// component boundary.
func (k Key) Matches(image Key) bool {
	if k.Host != image.Host {
		return false
	}
	if k.Prefix == "" {
		return true
	}
	return image.Prefix == k.Prefix || strings.HasPrefix(image.Prefix, k.Prefix+"/")
}

// Select returns the index of the scope that covers image with the longest
// prefix, or -1.
func Select(scopes []Key, image Key) int {
	best := -1
	for i, k := range scopes {
		if k.Matches(image) && (best < 0 || len(k.Prefix) > len(scopes[best].Prefix)) {
			best = i
		}
	}
	return best
}

// EncodeAuth encodes credentials as the Docker Engine API takes them for a
// pull (the X-Registry-Auth header): base64url of a JSON AuthConfig.
func EncodeAuth(username, password, host string) string {
	b, _ := json.Marshal(map[string]string{"username": username, "password": password, "serveraddress": host})
	return base64.URLEncoding.EncodeToString(b)
}
