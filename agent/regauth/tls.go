package regauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// DefaultCertsDir is where the Docker Engine looks for a registry's CA
// (<host:port>/*.crt) and client certificate (*.cert with *.key).
const DefaultCertsDir = "/etc/docker/certs.d"

// The files the agent writes under <certs dir>/<host>/, named as Docker's
// documentation names them.
const (
	caFile         = "ca.crt"
	clientCertFile = "client.cert"
	clientKeyFile  = "client.key"
)

// checkTLS validates a credential's TLS material.
func checkTLS(field string, c *fleetv1.Credential) error {
	if ca := c.GetCaCertificate(); ca != "" {
		if _, err := parseCerts(ca); err != nil {
			return errdefs.Invalid(field+".caCertificate", "%v; send the CA certificate as PEM (-----BEGIN CERTIFICATE-----)", err)
		}
	}
	cert, key := c.GetClientCertificate(), c.GetClientKey()
	switch {
	case (cert == "") != (key == ""):
		return errdefs.Invalid(field+".clientCertificate", "clientCertificate and clientKey go together; send both or neither")
	case cert != "":
		if _, err := tls.X509KeyPair([]byte(cert), []byte(key)); err != nil {
			return errdefs.Invalid(field+".clientKey", "the client certificate and key are not a PEM pair that matches: %v", err)
		}
	}
	return nil
}

func parseCerts(p string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(p)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// installTLS writes the TLS material of c where the engine reads it for
// host. Files absent from c are removed when the agent wrote them (their
// content is what old held); files an operator installed by hand are left.
func installTLS(dir, host string, c, old *fleetv1.Credential) error {
	hostDir := filepath.Join(dir, host)
	files := []struct {
		name, content, old string
		mode               os.FileMode
	}{
		{caFile, c.GetCaCertificate(), old.GetCaCertificate(), 0o644},
		{clientCertFile, c.GetClientCertificate(), old.GetClientCertificate(), 0o644},
		{clientKeyFile, c.GetClientKey(), old.GetClientKey(), 0o600},
	}
	for _, f := range files {
		path := filepath.Join(hostDir, f.name)
		if f.content == "" {
			if f.old != "" {
				if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, []byte(f.old)) {
					if err := os.Remove(path); err != nil {
						return certsErr(dir, err)
					}
				}
			}
			continue
		}
		if err := os.MkdirAll(hostDir, 0o755); err != nil {
			return certsErr(dir, err)
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(f.content), f.mode); err != nil {
			return certsErr(dir, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return certsErr(dir, err)
		}
	}
	os.Remove(hostDir) // only succeeds when empty
	return nil
}

func certsErr(dir string, err error) error {
	msg := fmt.Sprintf("installing registry certificates under %s: %v (the agent needs write access to the engine's certs.d directory; see --registry-certs-dir)", dir, err)
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w: %s", errdefs.ErrPermissionDenied, msg)
	}
	return errors.New(msg)
}

// tlsConfig is the client TLS configuration for a registry: the system's
// roots plus the credential's CA, and its client certificate.
func tlsConfig(c *fleetv1.Credential) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca := c.GetCaCertificate(); ca != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pool.AppendCertsFromPEM([]byte(ca))
		cfg.RootCAs = pool
	}
	if c.GetClientCertificate() != "" {
		pair, err := tls.X509KeyPair([]byte(c.GetClientCertificate()), []byte(c.GetClientKey()))
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// transport is an HTTP transport for talking to a registry with c's TLS
// settings.
func httpTransport(c *fleetv1.Credential) (*http.Transport, error) {
	tc, err := tlsConfig(c)
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc
	return t, nil
}

// probeResult is what an HTTPS request to a registry's /v2/ showed.
type probeResult int

const (
	probeTLSOK     probeResult = iota // TLS handshake verified
	probePlainHTTP                    // the registry speaks plain HTTP
	probeTLSFailed                    // handshake or verification failed
	probeUnreachable
)

// probe does GET https://host/v2/ with c's TLS settings.
func probe(ctx context.Context, host string, c *fleetv1.Credential) (probeResult, error) {
	tr, err := httpTransport(c)
	if err != nil {
		return probeTLSFailed, err
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/v2/", nil)
	if err != nil {
		return probeUnreachable, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		return probeTLSOK, nil
	}
	var (
		unknownCA  x509.UnknownAuthorityError
		invalid    x509.CertificateInvalidError
		hostname   x509.HostnameError
		verifyErr  *tls.CertificateVerificationError
		recordErr  tls.RecordHeaderError
		alertErr   tls.AlertError
		netOpError *net.OpError
	)
	switch {
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") || errors.As(err, &recordErr):
		return probePlainHTTP, err
	case errors.As(err, &unknownCA), errors.As(err, &invalid), errors.As(err, &hostname), errors.As(err, &verifyErr), errors.As(err, &alertErr):
		return probeTLSFailed, err
	case errors.As(err, &netOpError) && netOpError.Op == "remote error":
		return probeTLSFailed, err
	}
	return probeUnreachable, err
}
