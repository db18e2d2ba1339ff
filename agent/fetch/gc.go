package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// commitGrace is how long before GC started a blob must have been written
// to be removed. Zero: a fetch holds every blob of its image (Store.hold)
// from the moment it knows the manifest until it has listed the image, so
// the time rule only keeps a blob whose mtime is after GC's start; a
// margin would keep the blobs of an image replaced a moment ago, and a
// size cap could then not make room for its successor.
const commitGrace = 0

// GC drops from index.json the images for which keep is false, then removes
// every blob that no remaining image reaches (its manifest, or its index and
// the children of it in the store, and their configs and layers, read from
// the store) and every partial file whose download is not in progress. It
// returns the bytes it removed. A kept manifest it cannot read stops it
// before it removes anything.
//
// Fetches running meanwhile: index.json is locked from GC's reading it to
// the end of the sweep, so an image is listed either before GC marks its
// blobs or after GC is done. An unreachable blob is removed only if it was
// written commitGrace before GC started, its digest's lock is free (taken
// with a try-lock for the removal) and no fetch holds it (Store.hold): a
// blob a fetch is downloading, has committed since GC started, or holds,
// stays. A blob a running fetch committed earlier, or found in the store,
// without holding it, can still go before that fetch lists its image;
// addImage then refuses the image (errdefs.ErrNotFound) rather than list it
// incomplete, and fetching again downloads the blob again. A partial file
// goes when its digest's lock is free and it is not held: a download holds
// the lock from opening the file to committing the blob.
func (s *Store) GC(ctx context.Context, keep func(ref string, d v1.Descriptor) bool) (freed int64, err error) {
	start := s.now()
	s.idx.Lock()
	defer s.idx.Unlock()
	reached, err := s.dropImages(keep)
	if err != nil {
		return 0, fmt.Errorf("store GC: %w", err)
	}
	freed, err = s.sweepBlobs(ctx, reached, start.Add(-commitGrace))
	if err != nil {
		return freed, fmt.Errorf("store GC: %w", err)
	}
	n, err := s.sweepPartials(ctx)
	if err != nil {
		return freed + n, fmt.Errorf("store GC: %w", err)
	}
	return freed + n, nil
}

// dropImages rewrites index.json without the images keep refuses and
// returns the blobs the others reach. s.idx must be held.
func (s *Store) dropImages(keep func(ref string, d v1.Descriptor) bool) (map[v1.Hash]bool, error) {
	im, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	reached := map[v1.Hash]bool{}
	kept := make([]v1.Descriptor, 0, len(im.Manifests))
	for _, d := range im.Manifests {
		if !keep(d.Annotations[RefNameAnnotation], d) {
			continue
		}
		kept = append(kept, d)
		if _, err := s.mark(d, reached); err != nil {
			return nil, fmt.Errorf("image %s: %w", d.Annotations[RefNameAnnotation], err)
		}
	}
	if len(kept) == len(im.Manifests) {
		return reached, nil
	}
	im.Manifests = kept
	return reached, s.writeIndex(im)
}

// sweepBlobs removes the committed blobs not reached, written before
// cutoff, whose lock is free.
func (s *Store) sweepBlobs(ctx context.Context, reached map[v1.Hash]bool, cutoff time.Time) (freed int64, err error) {
	dir := filepath.Join(s.dir, "blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return freed, err
		}
		h, err := v1.NewHash("sha256:" + e.Name())
		if err != nil || reached[h] {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() || !fi.ModTime().Before(cutoff) {
			continue
		}
		n, err := s.removeUnlocked(h, s.blobPath(h), fi.Size())
		if err != nil {
			return freed, err
		}
		freed += n
	}
	return freed, nil
}

// sweepPartials removes the partial files whose digest's lock is free.
func (s *Store) sweepPartials(ctx context.Context) (freed int64, err error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "partial"))
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return freed, err
		}
		alg, hex, ok := strings.Cut(e.Name(), "-")
		if !ok {
			continue
		}
		h, err := v1.NewHash(alg + ":" + hex)
		if err != nil || s.partialPath(h) != filepath.Join(s.dir, "partial", e.Name()) {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		n, err := s.removeUnlocked(h, s.partialPath(h), fi.Size())
		if err != nil {
			return freed, err
		}
		freed += n
	}
	return freed, nil
}

// removeUnlocked removes path, size bytes, holding the lock of h; it
// removes nothing if the lock is taken or h is held.
func (s *Store) removeUnlocked(h v1.Hash, path string, size int64) (int64, error) {
	unlock, ok := s.tryLock(h)
	if !ok {
		return 0, nil
	}
	defer unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds[h] > 0 {
		return 0, nil
	}
	if err := os.Remove(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	return size, nil
}

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

// Trim brings the store under max bytes. If Usage is above it, GC removes
// what no image needs; then the images keep refuses go one at a time, the
// least recently used (UsedAnnotation) first, each followed by GC, until
// Usage is at most max or no such image is left. It never drops a kept
// image, and returns the bytes removed: the caller compares Usage with max
// to tell whether the cap was reached.
func (s *Store) Trim(ctx context.Context, max int64, keep func(ref string, d v1.Descriptor) bool) (freed int64, err error) {
	drop := func(string, v1.Descriptor) bool { return true } // garbage only, first
	for more := true; more; {
		u, err := s.Usage()
		if err != nil || u <= max {
			return freed, err
		}
		n, err := s.GC(ctx, drop)
		freed += n
		if err != nil {
			return freed, err
		}
		if drop, more, err = s.dropOldest(keep); err != nil {
			return freed, fmt.Errorf("store trim: %w", err)
		}
	}
	return freed, nil
}

// dropOldest is a keep func for GC that drops the least recently used
// image keep refuses; more is false when there is none.
func (s *Store) dropOldest(keep func(ref string, d v1.Descriptor) bool) (drop func(string, v1.Descriptor) bool, more bool, err error) {
	im, err := s.readIndex()
	if err != nil {
		return nil, false, err
	}
	var (
		oldest v1.Descriptor
		at     time.Time
	)
	for _, d := range im.Manifests {
		ref := d.Annotations[RefNameAnnotation]
		if keep(ref, d) {
			continue
		}
		used, _ := time.Parse(time.RFC3339Nano, d.Annotations[UsedAnnotation]) // none: the oldest
		if !more || used.Before(at) {
			oldest, at, more = d, used, true
		}
	}
	ref := oldest.Annotations[RefNameAnnotation]
	return func(r string, d v1.Descriptor) bool { return r != ref || d.Digest != oldest.Digest }, more, nil
}
