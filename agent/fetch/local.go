package fetch

import (
	"bytes"
	"encoding/json"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// local resolves a digest reference from the store alone, when its manifest
// (through its index, if it is one) and every blob it names are there: a
// redeploy of a fetched digest needs no network. ok is false otherwise.
func (f *Fetcher) local(ref name.Reference, platform v1.Platform) (img *resolved, ok bool) {
	d, isDigest := ref.(name.Digest)
	if !isDigest {
		return nil, false
	}
	h, err := v1.NewHash(d.DigestStr())
	if err != nil || !f.cfg.Store.Has(h) {
		return nil, false
	}
	raw, err := f.cfg.Store.Path().Bytes(h)
	if err != nil {
		return nil, false
	}
	var head struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests []v1.Descriptor `json:"manifests"`
	}
	if json.Unmarshal(raw, &head) != nil {
		return nil, false
	}
	desc := v1.Descriptor{MediaType: head.MediaType, Size: int64(len(raw)), Digest: h}
	var index *v1.Descriptor
	var indexRaw []byte
	if head.MediaType.IsIndex() || head.Manifests != nil {
		child, found := childFor(head.Manifests, platform)
		if !found || !f.cfg.Store.Has(child.Digest) {
			return nil, false
		}
		index, indexRaw = &v1.Descriptor{MediaType: head.MediaType, Size: int64(len(raw)), Digest: h}, raw
		if raw, err = f.cfg.Store.Path().Bytes(child.Digest); err != nil {
			return nil, false
		}
		desc = v1.Descriptor{MediaType: child.MediaType, Size: child.Size, Digest: child.Digest, Platform: &platform}
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, false
	}
	img = &resolved{desc: desc, raw: raw, manifest: m, index: index, indexRaw: indexRaw}
	for _, b := range img.blobs() {
		if !f.cfg.Store.Has(b.Digest) {
			return nil, false
		}
	}
	return img, true
}

// childFor is the first manifest of an index for platform; a child without
// a platform counts as linux/amd64, as in remote.
func childFor(children []v1.Descriptor, platform v1.Platform) (v1.Descriptor, bool) {
	for _, c := range children {
		p := v1.Platform{OS: "linux", Architecture: "amd64"}
		if c.Platform != nil {
			p = *c.Platform
		}
		if p.Satisfies(platform) {
			return c, true
		}
	}
	return v1.Descriptor{}, false
}
