package registry

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Layer is a layer holding one file, name, with data and mode.
func Layer(name string, data []byte, mode int64) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	// Compressed once: the digest needs the gzip, and so does every push
	// (a test image's binary is several MB, and under -race a gzip of it
	// takes seconds).
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithCompressedCaching)
}

// BinaryImage is an image for this machine's architecture whose only
// layer is the static binary data at /name, run with entrypoint and env
// (KEY=value), followed by extra layers.
func BinaryImage(name string, data []byte, entrypoint, env []string, extra ...v1.Layer) (v1.Image, error) {
	bin, err := Layer(name, data, 0o755)
	if err != nil {
		return nil, err
	}
	return ImageOf(bin, entrypoint, env, extra...)
}

// ImageOf is an image for this machine's architecture of the layer bin,
// run with entrypoint and env, followed by extra layers. Images of one
// bin share its compressed bytes.
func ImageOf(bin v1.Layer, entrypoint, env []string, extra ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, append([]v1.Layer{bin}, extra...)...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = entrypoint
	cf.Config.Env = env
	return mutate.ConfigFile(img, cf)
}

// SelfImage is an image of the running program (which must be statically
// linked) with args as its entrypoint's arguments: how cloud-sim ships its
// sample web server without fetching anything.
func SelfImage(args []string, env []string) (v1.Image, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if f, err := elf.Open(exe); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				f.Close()
				return nil, errors.New("this cloud-sim binary is dynamically linked and cannot run in an empty image; build it with CGO_ENABLED=0 (make build does)")
			}
		}
		f.Close()
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", exe, err)
	}
	return BinaryImage("cloud-sim", data, append([]string{"/cloud-sim"}, args...), env)
}
