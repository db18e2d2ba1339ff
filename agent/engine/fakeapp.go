package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// EnsureNetwork creates the network name, or checks the one there is the
// owner's.
func (f *Fake) EnsureNetwork(_ context.Context, name string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	owner, ok := f.networks[name]
	if !ok {
		f.networks[name] = f.owner
		return nil
	}
	if owner != f.owner {
		return notOwned("network", name)
	}
	return nil
}

// RemoveNetwork removes the owner's network name.
func (f *Fake) RemoveNetwork(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	owner, ok := f.networks[name]
	if ok && owner != f.owner {
		return notOwned("network", name)
	}
	for _, c := range f.containers {
		if slices.ContainsFunc(c.host.Networks, func(n Network) bool { return n.Name == name }) {
			return fmt.Errorf("remove network %s: it has active endpoints (container %s)", name, c.Name)
		}
	}
	delete(f.networks, name)
	return nil
}

// RemoveVolume removes the owner's volume name.
func (f *Fake) RemoveVolume(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	owner, ok := f.volumes[name]
	if ok && owner != f.owner {
		return notOwned("volume", name)
	}
	for _, c := range f.containers {
		if slices.ContainsFunc(c.spec.GetMounts(), func(m *fleetv1.Mount) bool { return m.GetType() == fleetv1.Mount_VOLUME && m.GetSource() == name }) {
			return fmt.Errorf("remove volume %s: volume is in use (container %s)", name, c.Name)
		}
	}
	delete(f.volumes, name)
	return nil
}

// Networks lists the networks, sorted.
func (f *Fake) Networks() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.networks))
}

// Volumes lists the volumes, sorted.
func (f *Fake) Volumes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.volumes))
}
