package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/fleet-agent/fleet/internal/errdefs"
)

// ErrDigestMismatch marks a blob whose bytes do not hash to its digest (or
// are longer than its size): the bytes are discarded and fetched again.
var ErrDigestMismatch = errors.New("digest mismatch")

// RefNameAnnotation names the reference an image was fetched as in the
// layout's index.json.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// UsedAnnotation is when an image was last added or touched (RFC 3339, UTC)
// in index.json: Trim removes the least recently used first.
const UsedAnnotation = "io.fleet-agent.used"

// Store is a content-addressed store in an OCI image layout: committed blobs
// in <dir>/blobs/sha256/<hex>, fetched images listed in <dir>/index.json
// (layout.FromPath reads it), partial downloads in <dir>/partial/sha256-<hex>.
// A blob enters blobs/ only after its sha256 matched its digest.
type Store struct {
	dir string
	now func() time.Time

	// idx is held while index.json is read and rewritten, and by GC from
	// reading index.json to the end of its sweep, so that an image is
	// listed either before GC marks or after it has removed its blobs.
	idx sync.Mutex

	mu    sync.Mutex // guards locks, holds and ready
	locks map[v1.Hash]chan struct{}
	ready map[v1.Hash]chan struct{} // closed when the blob is committed (Ready)
	holds map[v1.Hash]int
}

// NewStore opens the store under dir, making the layout if it is not there.
func NewStore(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("fetch store: dir is empty; set it to a directory under the agent's state dir")
	}
	for _, d := range []string{filepath.Join(dir, "blobs", "sha256"), filepath.Join(dir, "partial")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("fetch store: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); errors.Is(err, os.ErrNotExist) {
		if _, err := layout.Write(dir, empty.Index); err != nil {
			return nil, fmt.Errorf("fetch store: making the OCI layout in %s: %w", dir, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("fetch store: %w", err)
	}
	return &Store{dir: dir, now: time.Now, locks: map[v1.Hash]chan struct{}{}, holds: map[v1.Hash]int{}, ready: map[v1.Hash]chan struct{}{}}, nil
}

// Path is the OCI layout of the store, for reading images from it.
func (s *Store) Path() layout.Path { return layout.Path(s.dir) }

// Has reports whether the blob is committed (verified) in the store.
func (s *Store) Has(h v1.Hash) bool {
	fi, err := os.Stat(s.blobPath(h))
	return err == nil && fi.Mode().IsRegular()
}

func (s *Store) blobPath(h v1.Hash) string {
	return filepath.Join(s.dir, "blobs", h.Algorithm, h.Hex)
}

func (s *Store) partialPath(h v1.Hash) string {
	return filepath.Join(s.dir, "partial", h.Algorithm+"-"+h.Hex)
}

// lock serialises the download of one blob among the fetches sharing the
// store; the returned func releases it.
func (s *Store) lock(ctx context.Context, h v1.Hash) (func(), error) {
	s.mu.Lock()
	ch, ok := s.locks[h]
	if !ok {
		ch = make(chan struct{}, 1)
		s.locks[h] = ch
	}
	s.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// tryLock takes the lock of h if it is free: ok is false while a download
// (or a put) of h holds it.
func (s *Store) tryLock(h v1.Hash) (unlock func(), ok bool) {
	s.mu.Lock()
	ch, found := s.locks[h]
	if !found {
		ch = make(chan struct{}, 1)
		s.locks[h] = ch
	}
	s.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, true
	default:
		return nil, false
	}
}

// Usage is the bytes of the committed blobs and the partial files.
func (s *Store) Usage() (int64, error) {
	var total int64
	for _, d := range []string{filepath.Join(s.dir, "blobs", "sha256"), filepath.Join(s.dir, "partial")} {
		entries, err := os.ReadDir(d)
		if err != nil {
			return 0, fmt.Errorf("store usage: %w", err)
		}
		for _, e := range entries {
			fi, err := e.Info()
			if errors.Is(err, os.ErrNotExist) {
				continue // committed or removed since ReadDir
			}
			if err != nil {
				return 0, fmt.Errorf("store usage: %w", err)
			}
			if fi.Mode().IsRegular() {
				total += fi.Size()
			}
		}
	}
	return total, nil
}

// Missing is how many bytes fetching m's config and layers still has to
// download: the blobs not in the store, less the bytes their partial files
// hold (a partial file longer than its blob counts for nothing: the fetch
// starts it again). The disk to reserve before the first byte.
func (s *Store) Missing(m *v1.Manifest) (need int64) {
	seen := map[v1.Hash]bool{}
	for _, b := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if seen[b.Digest] || s.Has(b.Digest) {
			continue
		}
		seen[b.Digest] = true
		need += b.Size
		if fi, err := os.Stat(s.partialPath(b.Digest)); err == nil && fi.Size() <= b.Size {
			need -= fi.Size()
		}
	}
	return need
}

// hold keeps the blobs hs (and their partial files) from GC until release
// is called, though no image lists them yet: a fetch holds its image's
// blobs from before it checks which are in the store until it has listed
// the image. GC checks the holds and removes a file under s.mu, so a blob
// is either removed before hold returns or kept.
func (s *Store) hold(hs ...v1.Hash) (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range hs {
		s.holds[h]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, h := range hs {
				if s.holds[h]--; s.holds[h] <= 0 {
					delete(s.holds, h)
				}
			}
		})
	}
}

// partial is a blob being downloaded: the file and the running sha256 of
// the bytes in it.
type partial struct {
	f    *os.File
	sum  hash.Hash
	n    int64
	path string
}

// openPartial opens (or creates) the partial file of h and hashes the bytes
// already in it, so a download continues where an earlier one stopped.
func (s *Store) openPartial(h v1.Hash) (*partial, error) {
	if h.Algorithm != "sha256" {
		return nil, fmt.Errorf("blob %s: only sha256 digests are supported", h)
	}
	path := s.partialPath(h)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening partial blob: %w", err)
	}
	p := &partial{f: f, sum: sha256.New(), path: path}
	n, err := io.Copy(p.sum, f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading partial blob %s: %w", path, err)
	}
	p.n = n
	return p, nil
}

func (p *partial) Write(b []byte) (int, error) {
	n, err := p.f.Write(b)
	p.sum.Write(b[:n])
	p.n += int64(n)
	return n, err
}

// reset empties the partial file: the download starts again from byte zero.
func (p *partial) reset() error {
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("truncating partial blob: %w", err)
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewinding partial blob: %w", err)
	}
	p.sum.Reset()
	p.n = 0
	return nil
}

func (p *partial) close() error { return p.f.Close() }

// discard closes and deletes the partial file.
func (p *partial) discard() error {
	p.f.Close()
	if err := os.Remove(p.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("deleting partial blob: %w", err)
	}
	return nil
}

// commit moves a complete partial file into blobs/ if its bytes hash to h:
// fsync, rename, fsync of the directory. On a mismatch the partial file is
// deleted and the error wraps ErrDigestMismatch. The partial is closed in
// every case.
func (s *Store) commit(p *partial, h v1.Hash, size int64) error {
	got := "sha256:" + hex.EncodeToString(p.sum.Sum(nil))
	if p.n != size || got != h.String() {
		if err := p.discard(); err != nil {
			return err
		}
		return fmt.Errorf("blob %s: got %d bytes hashing to %s, want %d bytes: %w", h, p.n, got, size, ErrDigestMismatch)
	}
	if err := p.f.Sync(); err != nil {
		p.f.Close()
		return fmt.Errorf("blob %s: fsync: %w", h, err)
	}
	if err := p.f.Close(); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := os.Rename(p.path, s.blobPath(h)); err != nil {
		return fmt.Errorf("blob %s: moving into the store: %w", h, err)
	}
	err := syncDir(filepath.Dir(s.blobPath(h)))
	s.mu.Lock()
	if c, ok := s.ready[h]; ok {
		close(c)
		delete(s.ready, h)
	}
	s.mu.Unlock()
	return err
}

// Ready returns a channel closed once blob h is in the store (at once if
// it is): the loopback registry serves a blob the moment it is verified,
// so the engine's pull can run beside the fetch.
func (s *Store) Ready(h v1.Hash) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.ready[h]; ok {
		return c
	}
	c := make(chan struct{})
	if s.Has(h) {
		close(c)
		return c
	}
	s.ready[h] = c
	return c
}

// put commits a blob held in memory (a manifest) through the same checks as
// a download.
func (s *Store) put(h v1.Hash, b []byte) error {
	if s.Has(h) {
		return nil
	}
	unlock, err := s.lock(context.Background(), h)
	if err != nil {
		return err
	}
	defer unlock()
	if s.Has(h) {
		return nil
	}
	p, err := s.openPartial(h)
	if err != nil {
		return err
	}
	if err := p.reset(); err != nil {
		p.close()
		return err
	}
	if _, err := p.Write(b); err != nil {
		p.close()
		return fmt.Errorf("blob %s: writing: %w", h, err)
	}
	return s.commit(p, h, int64(len(b)))
}

// addImage lists the manifest (or index) in index.json under ref, replacing
// an earlier entry for the same reference, and marks it used now. A
// manifest whose config or layers are not all in the store is refused
// (errdefs.ErrNotFound): GC may have removed a blob the fetch found in the
// store before it listed the image; fetching again brings it back.
// index.json is written atomically.
func (s *Store) addImage(ref string, desc v1.Descriptor, elsewhere ...v1.Hash) error {
	s.idx.Lock()
	defer s.idx.Unlock()
	missing, err := s.mark(desc, map[v1.Hash]bool{})
	if err != nil {
		return fmt.Errorf("listing %s: %w", ref, err)
	}
	// Layers the engine holds were not fetched (Request.Skip).
	missing = slices.DeleteFunc(missing, func(h v1.Hash) bool { return slices.Contains(elsewhere, h) })
	if len(missing) > 0 {
		return fmt.Errorf("listing %s (%s): %d blobs are not in the store, the first %s: %w",
			ref, desc.Digest, len(missing), missing[0], errdefs.ErrNotFound)
	}
	im, err := s.readIndex()
	if err != nil {
		return err
	}
	kept := im.Manifests[:0]
	for _, d := range im.Manifests {
		if d.Annotations[RefNameAnnotation] != ref {
			kept = append(kept, d)
		}
	}
	desc.Annotations = map[string]string{RefNameAnnotation: ref, UsedAnnotation: s.usedNow()}
	im.Manifests = append(kept, desc)
	return s.writeIndex(im)
}

// Lookup is the entry of index.json named ref (as Fetch listed it: the
// parsed reference's String), if there is one.
func (s *Store) Lookup(ref string) (v1.Descriptor, bool, error) {
	im, err := s.readIndex()
	if err != nil {
		return v1.Descriptor{}, false, err
	}
	for _, d := range im.Manifests {
		if d.Annotations[RefNameAnnotation] == ref {
			return d, true, nil
		}
	}
	return v1.Descriptor{}, false, nil
}

// Touch marks the image listed as ref used now, so that Trim removes it
// after the images used before it. errdefs.ErrNotFound if it is not listed.
func (s *Store) Touch(ref string) error {
	s.idx.Lock()
	defer s.idx.Unlock()
	im, err := s.readIndex()
	if err != nil {
		return err
	}
	for i, d := range im.Manifests {
		if d.Annotations[RefNameAnnotation] == ref && ref != "" {
			im.Manifests[i].Annotations[UsedAnnotation] = s.usedNow()
			return s.writeIndex(im)
		}
	}
	return fmt.Errorf("touching %q: no such image in the store: %w", ref, errdefs.ErrNotFound)
}

func (s *Store) usedNow() string { return s.now().UTC().Format(time.RFC3339Nano) }

func (s *Store) readIndex() (*v1.IndexManifest, error) {
	f, err := os.Open(filepath.Join(s.dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("reading the store's index.json: %w", err)
	}
	defer f.Close()
	im, err := v1.ParseIndexManifest(f)
	if err != nil {
		return nil, fmt.Errorf("reading the store's index.json: %w", err)
	}
	return im, nil
}

// writeIndex replaces index.json; s.idx must be held.
func (s *Store) writeIndex(im *v1.IndexManifest) error {
	b, err := json.MarshalIndent(im, "", "   ")
	if err != nil {
		return fmt.Errorf("encoding index.json: %w", err)
	}
	return writeFileAtomic(filepath.Join(s.dir, "index.json"), b)
}

func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, bytes.NewReader(b)); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync of %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync of %s: %w", dir, err)
	}
	return nil
}
