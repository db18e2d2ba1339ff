package regauth

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
