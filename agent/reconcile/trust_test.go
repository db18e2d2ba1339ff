package reconcile_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// trustList is a hand-written trust policy: the digests it vouches for.
type trustList struct {
	mu      sync.Mutex
	trusted map[string]bool
	asked   []string // image@digest, in order
}

func (l *trustList) check(_ context.Context, image, digest string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked = append(l.asked, image+"@"+digest)
	if !l.trusted[digest] {
		return fmt.Errorf("%w: %s@%s is not signed", errdefs.ErrUntrustedImage, image, digest)
	}
	return nil
}

func TestTrustPolicy(t *testing.T) { synctest.Test(t, testTrustPolicy) }

// An image the policy does not vouch for is refused before it is pulled,
// and the running revision is left alone.
func testTrustPolicy(t *testing.T) {
	list := &trustList{trusted: map[string]bool{}}
	h := newHarness(t, reconcile.Policy{}, false, func(c *reconcile.Config) { c.Trust = list.check })
	good := h.fake.Publish("registry.test/web:1", "signed")
	h.fake.Publish("registry.test/web:2", "unsigned")
	list.trusted[good] = true

	st, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"})
	if err != nil || st.GetImageDigest() != good {
		t.Fatalf("deploy of the signed image = %v, %v; want RUNNING with digest %s", st, err, good)
	}
	st, err = h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.test/web:2"})
	if errdefs.Code(err) != fleetv1.Reply_UNTRUSTED_IMAGE || st.GetPhase() != fleetv1.DeploymentStatus_FAILED {
		t.Fatalf("deploy of the unsigned image = %v, %v; want FAILED, UNTRUSTED_IMAGE", st, err)
	}
	if _, _, found, _ := h.fake.Image(context.Background(), "registry.test/web:2"); found {
		t.Error("the unsigned image was pulled before it was refused")
	}
	cs, _ := h.fake.List(context.Background())
	if len(cs) != 1 || cs[0].Revision != 1 || !cs[0].Running {
		t.Errorf("containers = %+v, want revision 1 running and nothing else", cs)
	}
}

func TestTrustPolicyTagMovesDuringPull(t *testing.T) { synctest.Test(t, testTrustPolicyTagMoves) }

// The tag moves to an unsigned image between the check and the pull: the
// container is not created from what was not verified.
func testTrustPolicyTagMoves(t *testing.T) {
	list := &trustList{trusted: map[string]bool{}}
	h := newHarness(t, reconcile.Policy{}, false, func(c *reconcile.Config) { c.Trust = list.check })
	list.trusted[h.fake.Publish("registry.test/web:1", "signed")] = true
	h.fake.FailPull = func(context.Context, string) error {
		h.fake.Publish("registry.test/web:1", "swapped")
		return nil
	}
	st, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"})
	if errdefs.Code(err) != fleetv1.Reply_UNTRUSTED_IMAGE {
		t.Fatalf("deploy = %v, %v; want UNTRUSTED_IMAGE", st, err)
	}
	if cs, _ := h.fake.List(context.Background()); len(cs) != 0 {
		t.Errorf("containers = %+v, want none", cs)
	}
}

func TestTrustPolicyDigestSources(t *testing.T) { synctest.Test(t, testTrustPolicyDigestSources) }

// The digest checked is the one the reference names, the local copy's
// with pullPolicy NEVER, else the registry's.
func testTrustPolicyDigestSources(t *testing.T) {
	list := &trustList{trusted: map[string]bool{}}
	h := newHarness(t, reconcile.Policy{}, false, func(c *reconcile.Config) { c.Trust = list.check })
	d := h.fake.Publish("registry.test/web:1", "signed")
	list.trusted[d] = true
	specs := []*fleetv1.DeploymentSpec{
		{Name: "a", Revision: 1, Image: "registry.test/web:1"},
		{Name: "b", Revision: 1, Image: "registry.test/web:1", PullPolicy: fleetv1.Pull_NEVER},
	}
	for _, s := range specs {
		if _, err := h.deploy(t, s); err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
	}
	want := []string{"registry.test/web:1@" + d, "registry.test/web:1@" + d}
	if fmt.Sprint(list.asked) != fmt.Sprint(want) {
		t.Errorf("asked %v, want %v", list.asked, want)
	}
}
