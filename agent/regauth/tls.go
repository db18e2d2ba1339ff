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
//
// host is a validated host[:port] (credential.ParseRegistry); the files are
// still written through an os.Root on dir, so that neither a name nor a
// symlink planted in dir can make the agent write outside it.
func installTLS(dir, host string, c, old *fleetv1.Credential) error {
	files := []struct {
		name, content, old string
		mode               os.FileMode
	}{
		{caFile, c.GetCaCertificate(), old.GetCaCertificate(), 0o644},
		{clientCertFile, c.GetClientCertificate(), old.GetClientCertificate(), 0o644},
		{clientKeyFile, c.GetClientKey(), old.GetClientKey(), 0o600},
	}
	if !filepath.IsLocal(host) || filepath.Base(host) != host {
		return fmt.Errorf("%w: registry host %q is not a single directory name under %s", errdefs.ErrInvalidArgument, host, dir)
	}
	writes := hasTLS(c)
	if writes {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return certsErr(dir, err)
		}
	}
	root, err := os.OpenRoot(dir)
	if errors.Is(err, os.ErrNotExist) && !writes {
		return nil // nothing was installed
	}
	if err != nil {
		return certsErr(dir, err)
	}
	defer root.Close()
	for _, f := range files {
		path := filepath.Join(host, f.name)
		if f.content == "" {
			if f.old != "" {
				if b, err := root.ReadFile(path); err == nil && bytes.Equal(b, []byte(f.old)) {
					if err := root.Remove(path); err != nil {
						return certsErr(dir, err)
					}
				}
			}
			continue
		}
		if err := root.Mkdir(host, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return certsErr(dir, err)
		}
		if err := writeFile(root, path, f.content, f.mode); err != nil {
			return certsErr(dir, err)
		}
	}
	root.Remove(host) // only succeeds when empty
	return nil
}

// writeFile replaces name in root with content: written to a new file
// beside it (never an existing one, which could be a planted symlink) and
// renamed over it (which replaces a symlink rather than following it).
func writeFile(root *os.Root, name, content string, mode os.FileMode) error {
	tmp := name + ".tmp"
	if err := root.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Chmod(tmp, mode) // whatever the umask
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		root.Remove(tmp)
	}
	return err
}

func certsErr(dir string, err error) error {
	msg := fmt.Sprintf("installing registry certificates under %s: %v (the agent needs write access to the engine's certs.d directory; see --registry-certs-dir)", dir, err)
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w: %s", errdefs.ErrPermissionDenied, msg)
	}
	return errors.New(msg)
}
