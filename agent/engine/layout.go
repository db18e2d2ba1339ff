package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// LoadFromLayout loads the image whose manifest has digest manifest from the
// OCI image layout in layoutDir into the engine, tagged name. The image is
// streamed as a docker-save tarball into the engine's load endpoint, never
// held whole in memory. Every blob must be in the layout before anything is
// sent; a missing one fails naming its digest.
//
// The engine gives a loaded image the config digest as its ID and no
// RepoDigests: the caller keeps the registry's manifest digest for the
// status and creates the container by image ID (the config digest, which
// the engine itself computed from the bytes it got), so it runs exactly the
// verified content. The engine receives every layer, even ones it has (it
// skips unpacking them, not receiving them), and Docker 20.10 writes the
// whole tarball to its tmp directory before it loads it (as a pull writes
// the layers it downloads): reserve the image's size twice.
func (d *Docker) LoadFromLayout(ctx context.Context, layoutDir string, manifest v1.Hash, name string) error {
	return d.loadFromLayout(ctx, layoutDir, manifest, name, nil)
}

// loadFromLayout is LoadFromLayout; sent, if set, is told the bytes of
// each write to the engine.
func (d *Docker) loadFromLayout(ctx context.Context, layoutDir string, manifest v1.Hash, ref string, sent func(int)) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("load %s: the image name is not a tag reference: %w", ref, err)
	}
	img, err := layoutImage(layoutDir, manifest)
	if err != nil {
		return fmt.Errorf("load %s: %w", ref, err)
	}
	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		var w io.Writer = pw
		if sent != nil {
			w = countWriter{pw, sent}
		}
		err := tarball.Write(tag, img, w)
		pw.CloseWithError(err)
		written <- err
	}()
	loadErr := d.imageLoad(ctx, pr)
	// Unblocks the writer if the engine stopped reading early.
	pr.CloseWithError(errEngineStopped)
	// The HTTP client closes the pipe itself when it gives up.
	if werr := <-written; werr != nil && !errors.Is(werr, errEngineStopped) && !errors.Is(werr, io.ErrClosedPipe) {
		// The engine's error, if any, is the aborted upload.
		return fmt.Errorf("load %s from %s: %w", ref, layoutDir, werr)
	}
	if loadErr != nil {
		return fmt.Errorf("load %s from %s: %w", ref, layoutDir, loadErr)
	}
	return nil
}

var errEngineStopped = errors.New("the engine stopped reading the image")

// imageLoad sends the tarball in r to the engine and reads its answer to the
// end, failing on the first error message in it.
func (d *Docker) imageLoad(ctx context.Context, r io.Reader) error {
	resp, err := d.cli.ImageLoad(ctx, r, client.ImageLoadWithQuiet(true))
	if err != nil {
		return mapErr(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading the engine's answer: %w", err)
		}
		switch {
		case m.ErrorDetail.Message != "":
			return fmt.Errorf("the engine refused the image: %w", mapErr(errors.New(m.ErrorDetail.Message)))
		case m.Error != "":
			return fmt.Errorf("the engine refused the image: %w", mapErr(errors.New(m.Error)))
		case m.Stream != "":
			d.log.Debug("image load", "message", m.Stream)
		}
	}
}

// PullFromLoopback has the engine pull the image with digest manifest from
// the registry the agent serves on host (127.0.0.1:port, which the engine
// treats as insecure by default) as repo, then tags it name. The engine
// must share the agent's loopback: not a remote engine, not a rootless one
// in its own network namespace, not an agent in a container without the
// host's network. The engine
// checks every blob's digest as it pulls and skips the layers it has,
// however it got them. The loopback reference is removed again: it would
// keep the image after its tag is removed. So, as after LoadFromLayout, the
// image's ID is its config digest, name its only tag, and it has no
// RepoDigests.
func (d *Docker) PullFromLoopback(ctx context.Context, host, repo string, manifest v1.Hash, name string) error {
	src := host + "/" + repo + "@" + manifest.String()
	if err := d.Pull(ctx, src, "", nil); err != nil {
		return err
	}
	if err := d.cli.ImageTag(ctx, src, name); err != nil {
		return fmt.Errorf("tag %s as %s: %w", src, name, mapErr(err))
	}
	if _, err := d.cli.ImageRemove(ctx, src, image.RemoveOptions{}); err != nil {
		return fmt.Errorf("remove the loopback reference %s: %w", src, mapErr(err))
	}
	return nil
}

// Layers returns the diff IDs of the layers of every image the engine
// holds: the agent need not download those (the engine's pull skips a
// layer it knows).
func (d *Docker) Layers(ctx context.Context) (map[v1.Hash]bool, error) {
	list, err := d.cli.ImageList(ctx, image.ListOptions{})
	if err != nil {
		return nil, mapErr(err)
	}
	out := map[v1.Hash]bool{}
	for _, im := range list {
		ii, err := d.cli.ImageInspect(ctx, im.ID)
		if err != nil {
			continue // removed meanwhile
		}
		for _, l := range ii.RootFS.Layers {
			if h, err := v1.NewHash(l); err == nil {
				out[h] = true
			}
		}
	}
	return out, nil
}

type countWriter struct {
	w     io.Writer
	count func(int)
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.count(n)
	return n, err
}

// layoutImage reads the image manifest with digest h from the layout in dir
// and checks that its config and layers are all there. The manifest's and
// the config's bytes are checked against their digests; the engine checks
// each layer against the config's diff IDs as it loads it.
func layoutImage(dir string, h v1.Hash) (v1.Image, error) {
	raw, err := readBlob(dir, h)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", h, err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", h, err)
	}
	if !m.MediaType.IsImage() && m.MediaType != "" {
		return nil, fmt.Errorf("manifest %s is a %s, not an image manifest: pass the digest of this platform's manifest", h, m.MediaType)
	}
	for _, l := range m.Layers {
		fi, err := os.Stat(blobPath(dir, l.Digest))
		if err != nil {
			return nil, fmt.Errorf("layer %s of manifest %s is not in the layout: %w", l.Digest, h, err)
		}
		if fi.Size() != l.Size {
			return nil, fmt.Errorf("layer %s of manifest %s has %d bytes in the layout, the manifest says %d", l.Digest, h, fi.Size(), l.Size)
		}
	}
	cfg, err := readBlob(dir, m.Config.Digest)
	if err != nil {
		return nil, fmt.Errorf("config %s of manifest %s: %w", m.Config.Digest, h, err)
	}
	return partial.CompressedToImage(&compressedImage{dir: dir, raw: raw, m: m, cfg: cfg})
}

func blobPath(dir string, h v1.Hash) string {
	return filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
}

// readBlob reads a small blob (a manifest or config) and checks its digest.
func readBlob(dir string, h v1.Hash) ([]byte, error) {
	if h.Algorithm != "sha256" {
		return nil, fmt.Errorf("digest algorithm %q is not supported", h.Algorithm)
	}
	b, err := os.ReadFile(blobPath(dir, h))
	if err != nil {
		return nil, fmt.Errorf("not in the layout: %w", err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != h.Hex {
		return nil, fmt.Errorf("the layout's copy has digest sha256:%s", got)
	}
	return b, nil
}

// compressedImage is an image manifest and config read from a layout; its
// layers are opened from the layout as they are written.
type compressedImage struct {
	dir string
	raw []byte
	m   *v1.Manifest
	cfg []byte
}

func (c *compressedImage) RawManifest() ([]byte, error)   { return c.raw, nil }
func (c *compressedImage) RawConfigFile() ([]byte, error) { return c.cfg, nil }

func (c *compressedImage) MediaType() (types.MediaType, error) {
	if c.m.MediaType == "" {
		return types.OCIManifestSchema1, nil
	}
	return c.m.MediaType, nil
}

func (c *compressedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range c.m.Layers {
		if l.Digest == h {
			return &layoutLayer{path: blobPath(c.dir, h), desc: l}, nil
		}
	}
	return nil, fmt.Errorf("layer %s is not in manifest", h)
}

type layoutLayer struct {
	path string
	desc v1.Descriptor
}

func (l *layoutLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *layoutLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *layoutLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

func (l *layoutLayer) Compressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.desc.Digest, err)
	}
	return f, nil
}
