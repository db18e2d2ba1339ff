package serve

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/console"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
)

// The API server's timeouts. Waits for command outcomes and event streams
// lift them per request (package api).
const (
	apiReadHeaderTimeout = 10 * time.Second
	apiReadTimeout       = 30 * time.Second
	apiWriteTimeout      = 2 * time.Minute
	apiIdleTimeout       = 2 * time.Minute
)

// apiToken chooses the API token: cfg.APIToken when given, none with
// cfg.APIInsecureNoAuth (on a loopback listen only), else the one in the
// data directory's token file, made on first start. created reports that
// the file was made now.
func apiToken(cfg Config, ln net.Addr) (token, file string, created bool, err error) {
	if cfg.APIInsecureNoAuth {
		if cfg.APIToken != "" {
			return "", "", false, errors.New("serve: --api-insecure-no-auth and --api-token-file exclude each other")
		}
		if ip := tcpIP(ln); ip == nil || !ip.IsLoopback() {
			return "", "", false, fmt.Errorf("serve: --api-insecure-no-auth is refused on %s: it is for tests on a loopback --http-listen only", ln)
		}
		return "", "", false, nil
	}
	if cfg.APIToken != "" {
		return cfg.APIToken, "", false, nil
	}
	file = filepath.Join(cfg.DataDir, api.TokenFile)
	token, created, err = loadOrCreateToken(file)
	return token, file, created, err
}

// loadOrCreateToken reads the token in file, or writes a new one (32
// random bytes, base64url) with mode 0600 when there is none.
func loadOrCreateToken(file string) (string, bool, error) {
	b, err := os.ReadFile(file)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", false, fmt.Errorf("serve: API token file %s is empty: delete it to have a new token made, or pass --api-token-file", file)
		}
		return tok, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("serve: API token file: %w", err)
	}
	raw := make([]byte, 32)
	rand.Read(raw) // never fails (crypto/rand)
	tok := base64.RawURLEncoding.EncodeToString(raw)
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("serve: API token file: %w", err)
	}
	_, err = f.WriteString(tok + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(file)
		return "", false, fmt.Errorf("serve: API token file: %w", err)
	}
	return tok, true, nil
}

func tcpIP(a net.Addr) net.IP {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP
	}
	return nil
}

// allowedHosts are the Host values that name the API listening on ln: its
// address; on a loopback listen 127.0.0.1, localhost and [::1] with its
// port; on an unspecified one (0.0.0.0, [::]) those and the addresses of
// the host's interfaces; and the extra ones (--api-allowed-host).
func allowedHosts(ln net.Addr, extra []string) []string {
	hosts := []string{ln.String()}
	ip := tcpIP(ln)
	if ip == nil {
		return append(hosts, extra...)
	}
	port := strconv.Itoa(ln.(*net.TCPAddr).Port)
	if ip.IsLoopback() || ip.IsUnspecified() {
		for _, h := range []string{"127.0.0.1", "localhost", "::1"} {
			hosts = append(hosts, net.JoinHostPort(h, port))
		}
	}
	if ip.IsUnspecified() {
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				hosts = append(hosts, net.JoinHostPort(n.IP.String(), port))
			}
		}
	}
	return append(hosts, extra...)
}

// httpHandler serves the API under /v1/ and /healthz and the web console
// everywhere else, on one listener: the console's browser sessions are
// let through the API's guard (with their CSRF token for changes).
func httpHandler(cfg Config, ctrl *controller.Controller, token string, ln net.Addr) (http.Handler, error) {
	hosts := allowedHosts(ln, cfg.APIAllowedHosts)
	sessions := console.NewSessions(nil)
	apiHandler := api.New(api.Config{Controller: ctrl, Token: token, InsecureNoAuth: cfg.APIInsecureNoAuth, Sessions: sessions,
		AllowedHosts: hosts, MaxStreams: cfg.APIMaxStreams, Logger: cfg.Logger.With("component", "api")})
	con, err := console.New(console.Config{API: apiHandler, APIHost: ln.String(), Token: token, NoAuth: cfg.APIInsecureNoAuth, Origins: api.NewOrigins(hosts),
		Sessions: sessions, Logger: cfg.Logger.With("component", "console")})
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", apiHandler)
	mux.Handle("/healthz", apiHandler)
	mux.Handle("/", con)
	return mux, nil
}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: apiReadHeaderTimeout, ReadTimeout: apiReadTimeout,
		WriteTimeout: apiWriteTimeout, IdleTimeout: apiIdleTimeout}
}
