package rollout

import (
	"context"
	"encoding/json"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Specs remembers the last spec the controller deployed to each gateway's
// deployment: what a rollback deploys again.
type Specs struct {
	mu    sync.Mutex
	last  map[string]json.RawMessage // by specKey; guarded by mu
	dirty map[string]struct{}        // guarded by mu
}

// NewSpecs returns an empty memory.
func NewSpecs() *Specs {
	return &Specs{last: map[string]json.RawMessage{}, dirty: map[string]struct{}{}}
}

func specKey(tenant, gw, name string) string { return state.Key("spec", tenant, gw, name) }

// Remember records spec as the last deployed to gw of tenant.
func (s *Specs) Remember(tenant, gw string, spec *fleetv1.DeploymentSpec) {
	raw, err := protojson.Marshal(spec)
	if err != nil {
		return
	}
	k := specKey(tenant, gw, spec.GetName())
	s.mu.Lock()
	s.last[k], s.dirty[k] = raw, struct{}{}
	s.mu.Unlock()
}

// Last is the last spec of deployment name deployed to gw, nil if none.
func (s *Specs) Last(tenant, gw, name string) json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[specKey(tenant, gw, name)]
}

// load replaces the memory with the stored specs.
func (s *Specs) load(ctx context.Context, st *state.Store) error {
	specs := map[string]json.RawMessage{}
	err := st.Each(ctx, state.Specs, func(k string, raw []byte) error {
		var spec json.RawMessage
		if err := json.Unmarshal(raw, &spec); err != nil {
			return err
		}
		specs[k] = spec
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.last, s.dirty = specs, map[string]struct{}{}
	s.mu.Unlock()
	return nil
}

// flush writes the specs remembered since the last flush.
func (s *Specs) flush(ctx context.Context, st *state.Store) error {
	s.mu.Lock()
	batch := make(map[string]any, len(s.dirty))
	for k := range s.dirty {
		batch[k] = s.last[k]
	}
	s.dirty = map[string]struct{}{}
	s.mu.Unlock()
	err := st.PutMany(ctx, state.Specs, batch)
	if err != nil { // written with the next flush
		s.mu.Lock()
		for k := range batch {
			s.dirty[k] = struct{}{}
		}
		s.mu.Unlock()
	}
	return err
}
