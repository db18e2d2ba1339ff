package state

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// EmbeddedUser is the user of the embedded NATS server's login.
const EmbeddedUser = "cloud-sim"

// login is a NATS login: a user and password, or a credentials file
// (user JWT and nkey seed) that nats.go reads itself.
type login struct {
	user, password string
	credsFile      string
}

func (l login) option() nats.Option {
	switch {
	case l.credsFile != "":
		return nats.UserCredentials(l.credsFile)
	case l.user != "":
		return nats.UserInfo(l.user, l.password)
	}
	return func(*nats.Options) error { return nil }
}

// readLogin reads a login file: one line user:password, or a NATS
// credentials file. What the file holds is never put in an error.
func readLogin(path string) (login, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return login{}, fmt.Errorf("NATS login %s: %w", path, err)
	}
	text := strings.TrimSpace(string(b))
	if strings.Contains(text, "-----BEGIN NATS USER JWT-----") {
		return login{credsFile: path}, nil
	}
	user, password, ok := strings.Cut(text, ":")
	if !ok || user == "" || password == "" || strings.ContainsAny(text, "\r\n") {
		return login{}, fmt.Errorf("NATS login %s: want one line user:password, or a NATS credentials file (.creds: user JWT and nkey seed)", path)
	}
	return login{user: user, password: password}, nil
}

// embeddedLogin reads the embedded server's login from path, or makes it
// there on first start: user cloud-sim and a random 256-bit password, in a
// file only its owner can read.
func embeddedLogin(path string, log *slog.Logger) (login, error) {
	if fi, err := os.Stat(path); err == nil {
		if fi.Mode().Perm()&0o077 != 0 {
			log.Warn("the embedded NATS login file is readable by others; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
		}
		l, err := readLogin(path)
		if err == nil && l.credsFile != "" {
			err = fmt.Errorf("NATS login %s: the embedded server takes user:password, not a credentials file", path)
		}
		return l, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return login{}, fmt.Errorf("NATS login %s: %w", path, err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return login{}, err
	}
	l := login{user: EmbeddedUser, password: base64.RawURLEncoding.EncodeToString(secret)}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return login{}, fmt.Errorf("NATS login %s: %w", path, err)
	}
	_, err = fmt.Fprintf(f, "%s:%s\n", l.user, l.password)
	if err := errors.Join(err, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return login{}, fmt.Errorf("NATS login %s: %w", path, err)
	}
	return l, nil
}

// tlsOptions are the client's TLS settings for an external NATS: with a
// CA, TLS is required and the server's certificate must chain to it.
func tlsOptions(cfg Config) ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.CA != "" {
		opts = append(opts, nats.RootCAs(cfg.CA))
	}
	if (cfg.Cert == "") != (cfg.Key == "") {
		return nil, errors.New("state: a NATS client certificate needs both --nats-cert and --nats-key")
	}
	if cfg.Cert != "" {
		opts = append(opts, nats.ClientCert(cfg.Cert, cfg.Key))
	}
	return opts, nil
}

// connectHint says which setting fixes a failed connection.
func connectHint(err error) string {
	var unknownCA x509.UnknownAuthorityError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return "NATS refused the login: give it with --nats-creds (a file: user:password, or a .creds file)"
	case errors.As(err, &unknownCA), errors.As(err, &verify):
		return "the server's certificate is not trusted: give the CA that signs it with --nats-ca"
	case strings.Contains(err.Error(), "certificate required"):
		return "the server requires a client certificate: give it with --nats-cert and --nats-key"
	case errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted):
		return "TLS on one side only: --nats-ca (and tls:// URLs) when the server requires TLS"
	}
	return "check --nats, --nats-creds, --nats-ca, --nats-cert and --nats-key"
}

// redact hides the passwords of comma-separated NATS URLs.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("xxxxx")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// loopback reports whether host is a loopback address or localhost.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
