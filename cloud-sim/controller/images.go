package controller

import (
	"context"
	"maps"
	"slices"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// specImage is an image a spec pulls, and the field that names it in
// errors.
type specImage struct {
	image, field string
}

// specImages lists the images spec pulls: its own image, or each of its
// services' (an application), by service name. field is the spec's path
// in the request, e.g. "command.deploy.spec" or "deployment".
func specImages(spec *fleetv1.DeploymentSpec, field string) []specImage {
	if spec == nil {
		return nil
	}
	var out []specImage
	if spec.GetImage() != "" {
		out = append(out, specImage{spec.GetImage(), field + ".image"})
	}
	for _, name := range slices.Sorted(maps.Keys(spec.GetServices())) {
		if img := spec.GetServices()[name].GetImage(); img != "" {
			out = append(out, specImage{img, field + ".services." + name + ".image"})
		}
	}
	return out
}

// checkedImages is what checking a spec's images found: the tenant's
// credentials to send ahead (one per registry), each image's registry
// check (none when skipped), and warnings.
type checkedImages struct {
	ahead    []*fleetv1.Credential
	checks   []*tenantcred.CheckResult
	warnings []string
}

// checkImages checks every image of a spec against its registry from the
// cloud with the tenant's credential (unless skip), refusing on the first
// image the registry refuses: nothing is sent then.
func (c *Controller) checkImages(ctx context.Context, tenant string, imgs []specImage, skip bool) (*checkedImages, error) {
	out := &checkedImages{}
	for _, im := range imgs {
		cred, check, warn, err := c.creds.PrepareChecked(ctx, tenant, im.image, im.field, skip)
		if err != nil {
			return nil, err
		}
		if cred != nil && !slices.ContainsFunc(out.ahead, func(a *fleetv1.Credential) bool { return a.GetRegistry() == cred.GetRegistry() }) {
			out.ahead = append(out.ahead, cred)
		}
		if check != nil {
			out.checks = append(out.checks, check)
		}
		if warn != "" {
			out.warnings = append(out.warnings, warn)
		}
	}
	return out, nil
}

// firstCheck is the check of a spec's first image (the one of a single
// container), nil when none was made.
func (ci *checkedImages) firstCheck() *tenantcred.CheckResult {
	if len(ci.checks) == 0 {
		return nil
	}
	return ci.checks[0]
}

// missing are the credentials of ahead a gateway does not hold yet.
func missing(held []inventory.Registry, ahead []*fleetv1.Credential) []*fleetv1.Credential {
	var out []*fleetv1.Credential
	for _, cr := range ahead {
		if !tenantcred.Holds(held, cr) {
			out = append(out, cr)
		}
	}
	return out
}
