package testenv

import (
	"bytes"
	"context"
	"io"
	"slices"
	"testing"

	"github.com/docker/docker/api/types/image"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestRemoveOwnedKeepsOthersImages: the engine is shared (make test runs
// two scenario processes at once, and it is the machine's own engine), so
// a test's cleanup removes only the images it names by prefix. With an
// empty prefix it removed every image there was, another test's image
// under its feet included (CI: TestImageGCKeepsOperatorImages' loaded
// image gone while TestSecuritySignedCommands ended in the other shard).
// And it removes the references it names, not the image's id: the same
// image under another test's name stays.
func TestRemoveOwnedKeepsOthersImages(t *testing.T) {
	cli := DockerClient(t)
	ctx := context.Background()
	id := UniqueID("fleet-testenv")
	ref := id + "/other:1"
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	var tar bytes.Buffer
	if err := tarball.Write(tag, img, &tar); err != nil {
		t.Fatal(err)
	}
	res, err := cli.ImageLoad(ctx, &tar)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, res.Body) // the load ends with its output
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The same image under another test's name: same id, other registry.
	other := id + "-other/same:1"
	if err := cli.ImageTag(ctx, ref, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true})
		cli.ImageRemove(context.Background(), other, image.RemoveOptions{Force: true})
	})
	presentRef := func(r string) bool {
		imgs, err := cli.ImageList(ctx, image.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(imgs, func(im image.Summary) bool { return slices.Contains(im.RepoTags, r) })
	}
	present := func() bool { return presentRef(ref) }
	if !present() {
		t.Fatalf("docker load did not tag %s", ref)
	}

	for _, tt := range []struct {
		name, prefix string
		kept         bool
	}{
		{"no prefix", "", true},
		{"another prefix", id + "-x/", true},
		{"its prefix", id + "/", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			RemoveOwned(t, cli, id+"/owner", tt.prefix)
		}) // the subtest's cleanup has run
		if got := present(); got != tt.kept {
			t.Errorf("RemoveOwned with prefix %q: %s present = %v, want %v", tt.prefix, ref, got, tt.kept)
		}
		if !presentRef(other) {
			t.Fatalf("RemoveOwned with prefix %q removed %s, the same image under another test's name", tt.prefix, other)
		}
	}
}
