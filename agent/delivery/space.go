package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"runtime"

	"github.com/docker/go-units"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/fleet-agent/fleet/agent/fetch"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

const goarch = runtime.GOARCH

// reserve grants a fetch the need bytes it still has to download, before
// its first byte, or refuses with NO_SPACE: the store's filesystem must
// have them free beyond what fetches in progress reserved, and with a cap
// (--pull-store-max) the store must fit it, after trimming images no
// deployment keeps.
func (d *Delivery) reserve(ctx context.Context, need int64) (func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.MaxBytes > 0 {
		usage, err := d.cfg.Store.Usage()
		if err != nil {
			return nil, err
		}
		if usage+d.reserved+need > d.cfg.MaxBytes {
			if _, err := d.cfg.Store.Trim(ctx, max(0, d.cfg.MaxBytes-d.reserved-need), d.kept); err != nil {
				return nil, err
			}
			if usage, err = d.cfg.Store.Usage(); err != nil {
				return nil, err
			}
		}
		if usage+d.reserved+need > d.cfg.MaxBytes {
			return nil, fmt.Errorf("%w: the image needs %s more in the agent's image store, which holds %s of images deployments keep (and %s reserved by other pulls) under its cap of %s: raise --pull-store-max or remove deployments",
				errdefs.ErrNoSpace, size(need), size(usage), size(d.reserved), size(d.cfg.MaxBytes))
		}
	}
	free, err := d.cfg.FreeSpace()
	if err != nil {
		d.log.Debug("free space of the image store unknown; reservation against the cap only", "err", err)
	} else if uint64(d.reserved+need) > free {
		return nil, fmt.Errorf("%w: the image needs %s more in the agent's image store (%s), whose filesystem has %s free (%s reserved by other pulls): free space or remove deployments",
			errdefs.ErrNoSpace, size(need), d.cfg.Store.Path(), size(int64(free)), size(d.reserved))
	}
	d.reserved += need
	released := false
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !released {
			released = true
			d.reserved -= need
		}
	}, nil
}

func size(n int64) string { return units.BytesSize(float64(n)) }

// kept is the keep func of the store's GC and Trim.
func (d *Delivery) kept(ref string, _ v1.Descriptor) bool { return d.keep[ref] }

// GC keeps in the store the images of refs (the images deployments run or
// have prefetched) and removes the rest: other images, the blobs only they
// used, and the partial files of pulls no longer running. The engine's
// copies are image GC's business, not this.
func (d *Delivery) GC(ctx context.Context, refs []string) (freed int64, err error) {
	keep := map[string]bool{}
	for _, ref := range refs {
		if r, err := name.ParseReference(ref); err == nil {
			keep[r.String()] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.keep = keep
	if d.reserved > 0 {
		// A pull in progress may be resuming partial files GC would take.
		return 0, nil
	}
	return d.cfg.Store.GC(ctx, d.kept)
}

// registryErr maps a fetch's failure to the protocol's codes: a kind it
// already has (NO_SPACE, …), the registry's answer (401, 403, 404), a TLS
// verification failure, a digest that kept failing (INTERNAL), or else
// REGISTRY_UNREACHABLE.
func registryErr(err error) error {
	if err == nil || errdefs.Code(err) != fleetv1.Reply_INTERNAL {
		return err
	}
	var (
		terr      *transport.Error
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
	)
	switch {
	case errors.Is(err, fetch.ErrDigestMismatch):
		return err
	case errors.As(err, &terr) && terr.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%w: %w", errdefs.ErrUnauthenticated, err)
	case errors.As(err, &terr) && terr.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %w", errdefs.ErrPermissionDenied, err)
	case errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return fmt.Errorf("%w: the registry's TLS certificate did not verify; for a private CA send its certificate as caCertificate with set-credentials: %w", errdefs.ErrTLS, err)
	}
	return fmt.Errorf("%w: %w", errdefs.ErrRegistryUnreachable, err)
}
