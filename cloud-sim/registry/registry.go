// Package registry runs the emulated container registries of cloud-sim:
// go-containerregistry's registry behind the authentication of the
// registry families a fleet pulls from (Docker Hub's Bearer-token realm,
// Basic as Quay, Harbor, ACR, Nexus and Artifactory do, GCR's _json_key,
// AWS ECR's token API with SigV4) and optionally TLS from a private CA. The
// real Docker Engine pulls from them.
package registry

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Auth guards a registry's API. Implementations: Anonymous, Basic, Bearer,
// ECR.
type Auth interface {
	// handler wraps the registry's API with the authentication.
	handler(s *Server, next http.Handler) http.Handler
}

// Config configures a Server.
type Config struct {
	// Addr to listen on; "127.0.0.1:0" when empty.
	Addr string
	// Auth; nil means anonymous (a public registry).
	Auth Auth
	// Certificate makes the registry serve HTTPS (see CA.Issue).
	Certificate *tls.Certificate
	Logger      *slog.Logger
}

// Server is one running emulated registry.
type Server struct {
	// URL is the registry's base URL (http:// or https://).
	URL string
	// Host is host:port, as used in image references.
	Host string

	cfg   Config
	log   *slog.Logger
	store http.Handler // the registry without authentication
	srv   *http.Server
	api   *apiServer // ECR only
}

// Start listens and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Auth == nil {
		cfg.Auth = Anonymous{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	scheme := "http"
	if cfg.Certificate != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cfg.Certificate}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	s := &Server{
		URL: scheme + "://" + ln.Addr().String(), Host: ln.Addr().String(),
		cfg: cfg, log: cfg.Logger,
		store: ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0))),
	}
	if e, ok := cfg.Auth.(*ECR); ok {
		if s.api, err = startAPI(e, s); err != nil {
			ln.Close()
			return nil, err
		}
	}
	s.srv = &http.Server{Handler: cfg.Auth.handler(s, s.store), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)}
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops the registry (and its ECR API).
func (s *Server) Close() error {
	err := s.srv.Close()
	if s.api != nil {
		err = errors.Join(err, s.api.srv.Close())
	}
	return err
}

// Push stores img as repo:tag (or repo@digest when tag is empty), bypassing
// the authentication, and returns the manifest digest.
func (s *Server) Push(ctx context.Context, repo, tag string, img v1.Image) (string, error) {
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	ref := s.Host + "/" + repo + "@" + d.String()
	if tag != "" {
		ref = s.Host + "/" + repo + ":" + tag
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithTransport(inProcess{s.store})); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return d.String(), nil
}

// inProcess serves requests with a handler, without a network.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	if r.Body == nil {
		r.Body = http.NoBody // as a server request always has one
	}
	t.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = r // the client resolves Location against it
	return resp, nil
}

// repoPath matches the repository in a registry API path.
var repoPath = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs|tags)/`)

// repository returns the repository a request is about, "" for /v2/ and
// the catalog.
func repository(r *http.Request) string {
	if m := repoPath.FindStringSubmatch(r.URL.Path); m != nil {
		return m[1]
	}
	return ""
}

// writeError answers with the registry API's error body.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

// unauthorized answers 401 with the challenge a client authenticates to.
func unauthorized(w http.ResponseWriter, challenge, msg string) {
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", msg)
}

// readOnly reports whether r only reads (pulls).
func readOnly(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead }

// Anonymous is a public registry: anyone pulls, nobody pushes over the
// network (Push works in process).
type Anonymous struct{}

func (Anonymous) handler(_ *Server, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !readOnly(r) {
			writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "this registry is read-only")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Basic requires HTTP Basic credentials, as Quay and Harbor robot accounts,
// ACR, Nexus and Artifactory do. A user named _json_key is a GCR/GAR
// service account: its password is a JSON key, compared as JSON, so
// whitespace does not matter.
type Basic struct {
	Users map[string]string // username → password
}

func (b Basic) handler(_ *Server, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || !b.valid(u, p) {
			unauthorized(w, `Basic realm="cloud-sim registry"`, "authentication required")
			return
		}
		if !readOnly(r) {
			writeError(w, http.StatusForbidden, "DENIED", "pushes go through cloud-sim")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (b Basic) valid(user, password string) bool {
	want, ok := b.Users[user]
	if !ok {
		return false
	}
	switch user {
	case "_json_key":
		return sameJSON(want, password)
	case "_json_key_base64":
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(password))
		return err == nil && sameJSON(want, string(raw))
	}
	return want == password
}

// bearerChallenge is the WWW-Authenticate value of a token realm.
func bearerChallenge(realm, service, repo, extra string) string {
	v := fmt.Sprintf(`Bearer realm=%q,service=%q`, realm, service)
	if repo != "" {
		v += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
	}
	return v + extra
}

// scopeRepos returns the repositories a token request asks pull access
// to: scope=repository:team/app:pull (repeated).
func scopeRepos(scopes []string) []string {
	var out []string
	for _, sc := range scopes {
		for _, one := range strings.Fields(sc) {
			parts := strings.Split(one, ":")
			if len(parts) == 3 && parts[0] == "repository" && strings.Contains(parts[2], "pull") {
				out = append(out, parts[1])
			}
		}
	}
	return out
}

// sameJSON reports whether two JSON documents are equal but for
// insignificant whitespace.
func sameJSON(a, b string) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, []byte(a)) != nil || json.Compact(&cb, []byte(b)) != nil {
		return false
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}
