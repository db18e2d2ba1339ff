package fetch

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// mark adds to seen the digest of d and the blobs it names, read from the
// store: an index's children that are in the store (and what they name), a
// manifest's config and layers. missing lists d, if it is not in the
// store, or else the config and layers of a manifest that are not.
func (s *Store) mark(d v1.Descriptor, seen map[v1.Hash]bool) (missing []v1.Hash, err error) {
	seen[d.Digest] = true
	raw, err := os.ReadFile(s.blobPath(d.Digest))
	if errors.Is(err, os.ErrNotExist) {
		return []v1.Hash{d.Digest}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s: %w", d.Digest, err)
	}
	var head struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests []v1.Descriptor `json:"manifests"`
		Config    v1.Descriptor   `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	if head.MediaType.IsIndex() || head.Manifests != nil {
		for _, c := range head.Manifests {
			if seen[c.Digest] || !s.Has(c.Digest) {
				continue
			}
			if _, err := s.mark(c, seen); err != nil {
				return nil, err
			}
		}
		return nil, nil
	}
	for _, b := range append([]v1.Descriptor{head.Config}, head.Layers...) {
		if b.Digest == (v1.Hash{}) {
			continue
		}
		seen[b.Digest] = true
		if !s.Has(b.Digest) {
			missing = append(missing, b.Digest)
		}
	}
	return missing, nil
}
