package engine

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// LoadFromLayoutCounting is LoadFromLayout telling sent the bytes it sends
// to the engine, for the benchmark.
func (d *Docker) LoadFromLayoutCounting(ctx context.Context, dir string, manifest v1.Hash, name string, sent func(int)) error {
	return d.loadFromLayout(ctx, dir, manifest, name, sent)
}
