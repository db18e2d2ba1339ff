package scenarios

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	dockerclient "github.com/docker/docker/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/faultproxy"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

const mib = 1 << 20

// pullImage is an image built in the test: an app layer (see appLayer),
// then layers of incompressible random data; everything new each run, so
// that no engine has any of its layers from elsewhere.
type pullImage struct {
	img     v1.Image
	digest  string   // of the manifest
	config  string   // digest of the config: the engine's image ID
	diffIDs []string // the engine's RootFS.Layers
	layers  []v1.Hash
	size    int64 // manifest + config + layers: what a pull moves
}

func newPullImage(tb testing.TB, app v1.Layer, randomLayers, layerBytes int) pullImage {
	tb.Helper()
	seed := [32]byte{}
	copy(seed[:], fmt.Sprint(time.Now().UnixNano()))
	rng := rand.NewChaCha8(seed)
	layers := []v1.Layer{app}
	for i := range randomLayers {
		data := make([]byte, layerBytes)
		rng.Read(data)
		layers = append(layers, gzLayer(tb, tarFile{fmt.Sprint("random", i), 0o644, data}))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		tb.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/app"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		tb.Fatal(err)
	}
	p := pullImage{img: img}
	d, err := img.Digest()
	if err != nil {
		tb.Fatal(err)
	}
	raw, _ := img.RawManifest()
	m, _ := img.Manifest()
	p.digest, p.config, p.size = d.String(), m.Config.Digest.String(), int64(len(raw))+m.Config.Size
	for _, l := range m.Layers {
		p.layers = append(p.layers, l.Digest)
		p.size += l.Size
	}
	for _, id := range cf.RootFS.DiffIDs {
		p.diffIDs = append(p.diffIDs, id.String())
	}
	return p
}

// appLayer is the testapp binary at /app and a file naming the run: the
// layer's digest is new each run (testimage's own testapp layer is the
// same in every image, and an engine that has it would skip it).
func appLayer(tb testing.TB) v1.Layer {
	tb.Helper()
	ls, err := testimage.Build(tb, testimage.Spec{}).Layers()
	if err != nil {
		tb.Fatal(err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		tb.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			tb.Fatalf("testapp layer without /app: %v", err)
		}
		if h.Name == "app" {
			bin, err := io.ReadAll(tr)
			if err != nil {
				tb.Fatal(err)
			}
			return gzLayer(tb, tarFile{"app", 0o755, bin}, tarFile{"run", 0o644, []byte(fmt.Sprint(time.Now().UnixNano()))})
		}
	}
}

type tarFile struct {
	name string
	mode int64
	data []byte
}

// gzLayer is a gzipped layer of files, compressed once (random data does
// not shrink: its layer is as big as the data).
func gzLayer(tb testing.TB, files ...tarFile) v1.Layer {
	tb.Helper()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	raw := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// push stores the image in reg as repo:tag.
func (p pullImage) push(tb testing.TB, reg *testimage.Registry, repoTag string) {
	tb.Helper()
	repo, tag, _ := strings.Cut(repoTag, ":")
	if _, err := reg.Server.Push(context.Background(), repo, tag, p.img); err != nil {
		tb.Fatal(err)
	}
}

// removeAtCleanup removes, at cleanup, the containers of owner and then
// the image from the engine by its ID (every tag), so that the next pull of
// it is a real one.
func (p pullImage) removeAtCleanup(tb testing.TB, cli *dockerclient.Client, owner string) {
	tb.Cleanup(func() { p.remove(tb, cli, owner) })
}

func (p pullImage) remove(tb testing.TB, cli *dockerclient.Client, owner string) {
	ctx := context.Background()
	cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "io.fleet-agent.owner="+owner))})
	for _, c := range cs {
		cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	_, err := cli.ImageRemove(ctx, p.config, image.RemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		tb.Errorf("remove image %s: %v", p.config, err)
	}
}

// faultLink is a registry behind the fault injectors: Blobs (HTTP faults)
// behind a Proxy (link faults). Image references name the proxy.
type faultLink struct {
	proxy *faultproxy.Proxy
	blobs *faultproxy.Blobs
}

func newFaultLink(tb testing.TB, reg *testimage.Registry) *faultLink {
	tb.Helper()
	blobs, err := faultproxy.NewBlobs(reg.URL)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(blobs)
	tb.Cleanup(srv.Close)
	proxy, err := faultproxy.New(srv.Listener.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { proxy.Close() })
	return &faultLink{proxy: proxy, blobs: blobs}
}

func (l *faultLink) ref(repoTag string) string { return l.proxy.Addr() + "/" + repoTag }

// newPullEnv is a deployEnv whose agent may fetch from the link's proxy
// (plain HTTP), with the extra flags.
func newPullEnv(tb testing.TB, prefix string, l *faultLink, extra ...string) deployEnv {
	tb.Helper()
	args := append([]string{"--allow-insecure-registry", l.proxy.Addr(), "--pull-stall-timeout", "5s"}, extra...)
	e := newDeployEnv(tb, prefix, brokertest.Embedded, args...)
	testenv.RemoveOwned(tb, e.cli, e.owner, l.proxy.Addr()+"/")
	return e
}

func pullSpec(ref string, mode fleetv1.Pull_Mode) *fleetv1.DeploymentSpec {
	return &fleetv1.DeploymentSpec{Name: "big", Revision: 1, Image: ref, NetworkMode: "none",
		Pull:   &fleetv1.Pull{Mode: mode},
		Update: &fleetv1.Update{ProgressDeadlineSeconds: 120}}
}

// checkEngineImage fails unless the engine holds ref as exactly img: its
// ID is img's config digest and its layers are img's diff IDs.
func checkEngineImage(t *testing.T, cli *dockerclient.Client, ref string, img pullImage) {
	t.Helper()
	ii, err := cli.ImageInspect(context.Background(), ref)
	if err != nil {
		t.Fatalf("image %s in the engine: %v", ref, err)
	}
	if ii.ID != img.config || strings.Join(ii.RootFS.Layers, ",") != strings.Join(img.diffIDs, ",") {
		t.Errorf("engine image %s = ID %s, layers %v; want ID %s, layers %v", ref, ii.ID, ii.RootFS.Layers, img.config, img.diffIDs)
	}
}

func ratio(n, size int64) float64 { return float64(n) / float64(size) }

// TestPullFaults deploys the 64 MB, 4-layer image through a link
// that cuts, stalls, corrupts and throttles, the agent pulling (AGENT) and
// the engine pulling (ENGINE, recorded only). The image is built and pushed
// once; each case has its own link, agent and counters, and removes the
// image from the engine at its end.
func TestPullFaults(t *testing.T) {
	f := pullFaults{cli: testenv.DockerClient(t), reg: testimage.NewRegistry(t)}
	f.big = newPullImage(t, appLayer(t), 3, 20*mib)
	f.big.push(t, f.reg, "team/big:1")
	t.Logf("image: %d bytes in %d layers", f.big.size, len(f.big.layers))
	t.Run("cut every 4 MB, agent pulls", f.cutAgent)
	t.Run("cut every 4 MB, engine pulls (recorded)", f.cutEngine)
	t.Run("agent killed at 50 %", f.killed)
	t.Run("link silent for longer than the stall timeout", f.stalled)
	t.Run("corrupt byte", f.corrupt)
	t.Run("registry ignores Range", f.noRange)
	t.Run("throttled", testPullBandwidth)
}

// pullFaults is what the cases of TestPullFaults share: the engine, the
// registry and the 64 MB image in it.
type pullFaults struct {
	cli *dockerclient.Client
	reg *testimage.Registry
	big pullImage
}

// cutAgent: the link cut every 4 MiB (across connections); the agent
// pulls: the deploy succeeds within 1.05 × the image, and the engine holds
// exactly the image.
func (f pullFaults) cutAgent(t *testing.T) {
	l := newFaultLink(t, f.reg)
	e := newPullEnv(t, "gw-cut", l)
	f.big.removeAtCleanup(t, f.cli, e.owner)
	l.proxy.SetCut(faultproxy.Cut{Every: 4 * mib})
	ref := l.ref("team/big:1")
	r := sendLong(t, e.rec, e.gw, deploy(pullSpec(ref, fleetv1.Pull_AGENT)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != f.big.digest {
		t.Fatalf("deploy over a link cut every 4 MB = %v, want SUCCEEDED with digest %s", r, f.big.digest)
	}
	down := l.proxy.BytesDown()
	t.Logf("agent: %d cuts, %d bytes through the proxy = %.3f × the image", l.proxy.Cuts(), down, ratio(down, f.big.size))
	if l.proxy.Cuts() < 10 {
		t.Errorf("the link was cut %d times, want at least 10 (every 4 MB of 64)", l.proxy.Cuts())
	}
	if ratio(down, f.big.size) > 1.05 {
		t.Errorf("%d bytes through the proxy = %.3f × the image, want ≤ 1.05", down, ratio(down, f.big.size))
	}
	checkEngineImage(t, f.cli, ref, f.big)
}

// cutEngine: the same cuts, dockerd pulling (pull.mode ENGINE): how many
// bytes it moved and whether it finished within a bound, recorded only.
func (f pullFaults) cutEngine(t *testing.T) {
	l := newFaultLink(t, f.reg)
	e := newPullEnv(t, "gw-cut-engine", l)
	f.big.removeAtCleanup(t, f.cli, e.owner)
	l.proxy.SetCut(faultproxy.Cut{Every: 4 * mib})
	const bound = 12 * time.Second
	start := time.Now()
	r, finished := deployWithin(t, e, pullSpec(l.ref("team/big:1"), fleetv1.Pull_ENGINE), bound)
	down := l.proxy.BytesDown()
	t.Logf("dockerd: finished %v (within %v: %v), %d cuts, %d bytes through the proxy = %.3f × the image, %d ranged requests; reply %v",
		finished, bound, time.Since(start).Round(time.Millisecond), l.proxy.Cuts(), down, ratio(down, f.big.size), l.blobs.RangeRequests(), r)
}

// killed: the agent SIGKILLed when half the image has crossed the link
// (the proxy holds the rest), then started again: the journaled deploy
// completes from the bytes on disk, within 1.1 × the image.
func (f pullFaults) killed(t *testing.T) {
	l := newFaultLink(t, f.reg)
	e := newPullEnv(t, "gw-kill-pull", l)
	f.big.removeAtCleanup(t, f.cli, e.owner)
	l.proxy.StallAt(f.big.size / 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := e.rec.Send(ctx, tenant, e.gw, deploy(pullSpec(l.ref("team/big:1"), fleetv1.Pull_AGENT)))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "half the image through the proxy", l.proxy.Stalled)
	e.agent.Kill()
	l.proxy.Resume()
	e.agent.Start(t)
	r, err := req.Final(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != f.big.digest {
		t.Fatalf("deploy after the kill = %v, want SUCCEEDED with digest %s", r, f.big.digest)
	}
	down := l.proxy.BytesDown()
	t.Logf("killed at %d bytes; %d bytes through the proxy in all = %.3f × the image", f.big.size/2, down, ratio(down, f.big.size))
	if ratio(down, f.big.size) > 1.1 {
		t.Errorf("%d bytes through the proxy = %.3f × the image, want ≤ 1.1", down, ratio(down, f.big.size))
	}
}

// stalled: the link goes silent at a third of the image for longer than
// --pull-stall-timeout: the agent reconnects, within 1.05 × the image.
func (f pullFaults) stalled(t *testing.T) {
	l := newFaultLink(t, f.reg)
	e := newPullEnv(t, "gw-stall", l)
	f.big.removeAtCleanup(t, f.cli, e.owner)
	l.proxy.StallAt(f.big.size / 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := e.rec.Send(ctx, tenant, e.gw, deploy(pullSpec(l.ref("team/big:1"), fleetv1.Pull_AGENT)))
	if err != nil {
		t.Fatal(err)
	}
	// The agent gives up on the silent connections after
	// --pull-stall-timeout (5 s here) and reconnects; the link is back.
	testenv.Eventually(t, "a third of the image through the proxy", l.proxy.Stalled)
	testenv.Eventually(t, "the agent noticing the stall", func() bool { return strings.Contains(e.agent.Logs(), "stall timeout") })
	l.proxy.Resume()
	r, err := req.Final(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != f.big.digest {
		t.Fatalf("deploy after a stall = %v, want SUCCEEDED with digest %s", r, f.big.digest)
	}
	down := l.proxy.BytesDown()
	t.Logf("%d bytes through the proxy = %.3f × the image", down, ratio(down, f.big.size))
	if ratio(down, f.big.size) > 1.05 {
		t.Errorf("%d bytes through the proxy = %.3f × the image, want ≤ 1.05", down, ratio(down, f.big.size))
	}
}

// corrupt: one byte of a layer flipped on the way: the blob fails its
// digest and is fetched again, the deploy succeeds, and the engine holds
// the good image (its ID and layer diff IDs), so nothing unverified was
// loaded.
func (f pullFaults) corrupt(t *testing.T) {
	l := newFaultLink(t, f.reg)
	e := newPullEnv(t, "gw-corrupt", l)
	f.big.removeAtCleanup(t, f.cli, e.owner)
	ref := l.ref("team/big:1")
	if _, err := f.cli.ImageInspect(context.Background(), f.big.config); err == nil {
		t.Fatalf("the engine has the image before the deploy")
	}
	bad := f.big.layers[2]
	l.blobs.CorruptOnce(bad.String(), 10*mib)
	r := sendLong(t, e.rec, e.gw, deploy(pullSpec(ref, fleetv1.Pull_AGENT)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != f.big.digest {
		t.Fatalf("deploy with a corrupt byte on the way = %v, want SUCCEEDED with digest %s", r, f.big.digest)
	}
	if l.blobs.Corrupted() != 1 {
		t.Fatalf("the proxy flipped %d bytes, want 1", l.blobs.Corrupted())
	}
	down := l.proxy.BytesDown()
	t.Logf("%d bytes through the proxy = %.3f × the image", down, ratio(down, f.big.size))
	if down < f.big.size+10*mib {
		t.Errorf("%d bytes through the proxy: the corrupt blob was not fetched again (want ≥ the image + 10 MiB)", down)
	}
	if !strings.Contains(e.agent.Logs(), "failed its digest") {
		t.Errorf("the agent's log says nothing of a blob that failed its digest")
	}
	// What the engine holds is the good image, layer by layer.
	checkEngineImage(t, f.cli, ref, f.big)
}

// noRange: a registry that answers a Range request with the whole blob,
// on a link cut twice: the agent restarts those blobs and completes.
func (f pullFaults) noRange(t *testing.T) {
	l := newFaultLink(t, f.reg)
	e := newPullEnv(t, "gw-norange", l)
	f.big.removeAtCleanup(t, f.cli, e.owner)
	l.blobs.IgnoreRange(true)
	l.proxy.SetCut(faultproxy.Cut{Every: 16 * mib, Max: 2})
	ref := l.ref("team/big:1")
	r := sendLong(t, e.rec, e.gw, deploy(pullSpec(ref, fleetv1.Pull_AGENT)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != f.big.digest {
		t.Fatalf("deploy from a registry without Range = %v, want SUCCEEDED with digest %s", r, f.big.digest)
	}
	down := l.proxy.BytesDown()
	t.Logf("%d cuts, %d ranged requests answered 200, %d bytes through the proxy = %.3f × the image",
		l.proxy.Cuts(), l.blobs.RangeRequests(), down, ratio(down, f.big.size))
	if l.blobs.RangeRequests() == 0 {
		t.Errorf("the agent never asked for a Range after a cut: the case tested nothing")
	}
	checkEngineImage(t, f.cli, ref, f.big)
}

// testPullBandwidth: an update that adds a 2 MiB layer (revision 1, the
// app layer alone, was deployed before the cap: 3 MB at 128 KiB/s would
// take 23 s), through a link throttled to 256 KiB/s with the agent capped
// at 128 KiB/s (--pull-bandwidth, set by FLEET_PULL_BANDWIDTH for the
// agent's restart): the rate the proxy sees, between 10 % and 90 % of the
// new layer, is within 10 % of the cap, and only the new layer moves.
func testPullBandwidth(t *testing.T) {
	const link, capped = 256 << 10, 128 << 10
	cli := testenv.DockerClient(t)
	reg := testimage.NewRegistry(t)
	app := appLayer(t)
	base := newPullImage(t, app, 0, 0)
	base.push(t, reg, "team/small:1")
	next := newPullImage(t, app, 1, 2*mib)
	next.push(t, reg, "team/small:2")
	l := newFaultLink(t, reg)
	e := newPullEnv(t, "gw-bw", l)
	base.removeAtCleanup(t, cli, e.owner)
	next.removeAtCleanup(t, cli, e.owner)
	if r := sendLong(t, e.rec, e.gw, deploy(pullSpec(l.ref("team/small:1"), fleetv1.Pull_AGENT))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy r1 = %v", r)
	}
	// The cap from now on: --pull-bandwidth as the environment sets it,
	// read when the agent starts again (its store keeps the app layer).
	if code := e.agent.Term(t); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	t.Setenv("FLEET_PULL_BANDWIDTH", "128KiB/s")
	e.agent.Start(t)
	e.rec.Await(t, "birth after the restart", 2, mqttclienttest.Kind(topic.Birth, e.gw))

	l.proxy.Throttle(link)
	m, _ := next.img.Manifest()
	layer := m.Layers[len(m.Layers)-1].Size
	from := l.proxy.BytesDown()
	lo, hi := from+layer/10, from+layer*9/10
	var tLo, tHi atomic.Int64
	l.proxy.Observe(func(total int64) {
		now := time.Now().UnixNano()
		if total >= lo {
			tLo.CompareAndSwap(0, now)
		}
		if total >= hi {
			tHi.CompareAndSwap(0, now)
		}
	})
	spec := pullSpec(l.ref("team/small:2"), fleetv1.Pull_AGENT)
	spec.Revision = 2
	if r := sendLong(t, e.rec, e.gw, deploy(spec)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("throttled deploy r2 = %v", r)
	}
	moved := l.proxy.BytesDown() - from
	if tHi.Load() == 0 {
		t.Fatalf("the proxy saw %d bytes of r2, want at least its new layer's %d", moved, layer)
	}
	if moved > layer+layer/20 {
		t.Errorf("r2 moved %d bytes, want about its new layer's %d (the app layer is in the agent's store)", moved, layer)
	}
	rate := float64(hi-lo) / time.Duration(tHi.Load()-tLo.Load()).Seconds()
	t.Logf("r2: %d bytes through the proxy (new layer %d); %.0f B/s between 10 %% and 90 %% of the layer (cap %d B/s, link %d B/s): %.3f × the cap",
		moved, layer, rate, capped, link, rate/capped)
	// The cap only: under load the pull is slower than its cap, which is
	// no fault of the limiter (as TestFetchBandwidthCap).
	if rate > capped*1.1 {
		t.Errorf("measured %.0f B/s, over the cap %d (+10 %%)", rate, capped)
	}
}

// deployWithin sends the deploy and waits for its final reply up to bound;
// finished is false if none came.
func deployWithin(t testing.TB, e deployEnv, spec *fleetv1.DeploymentSpec, bound time.Duration) (r *fleetv1.Reply, finished bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	req, err := e.rec.Send(ctx, tenant, e.gw, deploy(spec))
	if err != nil {
		t.Fatal(err)
	}
	r, err = req.Final(ctx)
	return r, err == nil
}

// TestAgentPullSkipsLayersTheEngineHas: "layers the engine already has are
// not fetched again" (issue 14). Revision 1 (the app layer alone) is pulled
// by the engine; revision 2 adds a 2 MiB layer and is pulled by the agent:
// only the new layer should cross the link.
func TestAgentPullSkipsLayersTheEngineHas(t *testing.T) {
	cli := testenv.DockerClient(t)
	reg := testimage.NewRegistry(t)
	app := appLayer(t)
	base := newPullImage(t, app, 0, 0)
	base.push(t, reg, "team/small:1")
	next := newPullImage(t, app, 1, 2*mib)
	next.push(t, reg, "team/small:2")
	l := newFaultLink(t, reg)
	e := newPullEnv(t, "gw-known", l)
	base.removeAtCleanup(t, cli, e.owner)
	next.removeAtCleanup(t, cli, e.owner)
	if r := sendLong(t, e.rec, e.gw, deploy(pullSpec(l.ref("team/small:1"), fleetv1.Pull_ENGINE))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy r1 (ENGINE) = %v", r)
	}
	from := l.proxy.BytesDown()
	spec := pullSpec(l.ref("team/small:2"), fleetv1.Pull_AGENT)
	spec.Revision = 2
	if r := sendLong(t, e.rec, e.gw, deploy(spec)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy r2 (AGENT) = %v", r)
	}
	m, _ := next.img.Manifest()
	moved, layer := l.proxy.BytesDown()-from, m.Layers[1].Size
	if moved > layer+layer/20 {
		t.Errorf("r2 moved %d bytes; want about its new layer's %d (the engine had the %d-byte app layer)", moved, layer, m.Layers[0].Size)
	}
}
