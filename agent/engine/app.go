package engine

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/network"

	"github.com/fleet-agent/fleet/internal/errdefs"
)

// LabelService is the service of an application a container runs (a
// single container's: the deployment's name).
const LabelService = "io.fleet-agent.service"

// Network is an application network a container joins.
type Network struct {
	Name    string   // the engine's name: fleet-{deployment}-{network}
	Aliases []string // names the other containers on it resolve: the service's
}

// endpoints is the networking config of a container created on nets.
func endpoints(nets []Network) *network.NetworkingConfig {
	if len(nets) == 0 {
		return nil
	}
	cfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{}}
	for _, n := range nets {
		cfg.EndpointsConfig[n.Name] = &network.EndpointSettings{Aliases: n.Aliases}
	}
	return cfg
}

// connect attaches a created container to nets after the first, which
// it was created on (older engines take one network at creation).
func (d *Docker) connect(ctx context.Context, id string, nets []Network) error {
	for i := 1; i < len(nets); i++ {
		if err := d.cli.NetworkConnect(ctx, nets[i].Name, id, &network.EndpointSettings{Aliases: nets[i].Aliases}); err != nil {
			return fmt.Errorf("connect to network %s: %w", nets[i].Name, mapErr(err))
		}
	}
	return nil
}

// notOwned refuses to use or remove an engine object another party made.
func notOwned(kind, name string) error {
	return fmt.Errorf("%w: %s %q exists and was not created by this agent; remove or rename it", errdefs.ErrPolicyDenied, kind, name)
}

// EnsureNetwork creates the bridge network name labelled with the owner, or
// checks that the one there is the owner's.
func (d *Docker) EnsureNetwork(ctx context.Context, name string, internal bool) error {
	n, err := d.cli.NetworkInspect(ctx, name, network.InspectOptions{})
	if cerrdefs.IsNotFound(err) {
		_, err = d.cli.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Internal: internal,
			Labels: map[string]string{LabelOwner: d.owner}})
		if err != nil {
			return fmt.Errorf("create network %s: %w", name, mapErr(err))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("network %s: %w", name, mapErr(err))
	}
	if n.Labels[LabelOwner] != d.owner {
		return notOwned("network", name)
	}
	return nil
}

// RemoveNetwork removes the owner's network name; a missing one is not an
// error, one someone else made is refused.
func (d *Docker) RemoveNetwork(ctx context.Context, name string) error {
	n, err := d.cli.NetworkInspect(ctx, name, network.InspectOptions{})
	switch {
	case cerrdefs.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("network %s: %w", name, mapErr(err))
	case n.Labels[LabelOwner] != d.owner:
		return notOwned("network", name)
	}
	if err := d.cli.NetworkRemove(ctx, name); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove network %s: %w", name, mapErr(err))
	}
	return nil
}

// RemoveVolume removes the owner's volume name; a missing one is not an
// error, one someone else made is refused.
func (d *Docker) RemoveVolume(ctx context.Context, name string) error {
	v, err := d.cli.VolumeInspect(ctx, name)
	switch {
	case cerrdefs.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("volume %s: %w", name, mapErr(err))
	case v.Labels[LabelOwner] != d.owner:
		return notOwned("volume", name)
	}
	if err := d.cli.VolumeRemove(ctx, name, false); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove volume %s: %w", name, mapErr(err))
	}
	return nil
}
