package credential

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TLSConfig is the client TLS configuration for a registry: the system's
// roots plus the credential's CA, and its client certificate.
func TLSConfig(c *fleetv1.Credential) (*tls.Config, error) {
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

// HTTPTransport is an HTTP transport for talking to a registry with c's TLS
// settings.
func HTTPTransport(c *fleetv1.Credential) (*http.Transport, error) {
	tc, err := TLSConfig(c)
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

// probe does GET https://host/v2/ through tr.
func probe(ctx context.Context, host string, tr *http.Transport) (probeResult, error) {
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

// RequireTLS refuses a registry that does not speak verified TLS with c's
// TLS settings.
func RequireTLS(ctx context.Context, host string, c *fleetv1.Credential) error {
	tr, err := HTTPTransport(c)
	if err != nil {
		return fmt.Errorf("%w: registry %s: %v", errdefs.ErrTLS, host, err)
	}
	defer tr.CloseIdleConnections()
	switch res, err := probe(ctx, host, tr); res {
	case probeTLSOK:
		return nil
	case probePlainHTTP:
		return fmt.Errorf("%w: registry %s serves plain HTTP and its credential sets requireTls", errdefs.ErrTLS, host)
	case probeTLSFailed:
		return fmt.Errorf("%w: registry %s: TLS verification failed and its credential sets requireTls: %v", errdefs.ErrTLS, host, err)
	default:
		return fmt.Errorf("%w: registry %s: %v", errdefs.ErrRegistryUnreachable, host, err)
	}
}

// Loopback reports whether host (host or host:port) is on 127.0.0.0/8,
// ::1 or is localhost: registries the Docker Engine treats as insecure by
// default.
func Loopback(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
