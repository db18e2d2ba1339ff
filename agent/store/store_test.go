package store_test

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fleet-agent/fleet/agent/store"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T, cfg store.Config) *store.Store {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "state.db")
	}
	s, err := store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSessionSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := store.Open(store.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 3; want++ {
		if got, err := s.NextSession(); err != nil || got != want {
			t.Fatalf("NextSession = %d, %v; want %d", got, err, want)
		}
	}
	if _, err := store.Open(store.Config{Path: path}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("second Open = %v, want ErrLocked", err)
	}
	s.Close()
	s = open(t, store.Config{Path: path})
	if got, _ := s.NextSession(); got != 4 {
		t.Errorf("NextSession after reopen = %d, want 4", got)
	}
}

func TestJournal(t *testing.T) {
	s := open(t, store.Config{})
	c := store.Command{ID: "a", Verb: "rebirth", Payload: []byte("p"), ResponseTopic: "r", CorrelationData: []byte{9}}
	if _, dup, err := s.Begin(c); err != nil || dup {
		t.Fatalf("Begin = dup %v, %v", dup, err)
	}
	got, dup, err := s.Begin(store.Command{ID: "a", Verb: "rebirth"})
	if err != nil || !dup || got.ResponseTopic != "r" {
		t.Fatalf("second Begin = %+v, dup %v, %v; want the first entry as duplicate", got, dup, err)
	}
	if un, _ := s.Unfinished(); len(un) != 1 || string(un[0].Payload) != "p" {
		t.Fatalf("Unfinished = %+v, want entry a with payload", un)
	}
	if err := s.Finish("a", []byte("reply")); err != nil {
		t.Fatal(err)
	}
	if un, _ := s.Unfinished(); len(un) != 0 {
		t.Errorf("Unfinished after Finish = %+v", un)
	}
	ud, _ := s.Undelivered()
	if len(ud) != 1 || string(ud[0].Reply) != "reply" || ud[0].Payload != nil {
		t.Fatalf("Undelivered = %+v, want a with reply and no payload", ud)
	}
	if err := s.MarkDelivered("a"); err != nil {
		t.Fatal(err)
	}
	if ud, _ := s.Undelivered(); len(ud) != 0 {
		t.Errorf("Undelivered after MarkDelivered = %+v", ud)
	}
	if err := s.Finish("missing", nil); err == nil {
		t.Error("Finish of an unknown id succeeded")
	}
}

func TestJournalBounds(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, store.Config{MaxCommands: 3, MaxCommandAge: time.Hour, Now: clk.now})
	finish := func(id string) {
		t.Helper()
		if _, _, err := s.Begin(store.Command{ID: id}); err != nil {
			t.Fatal(err)
		}
		if err := s.Finish(id, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.MarkDelivered(id); err != nil {
			t.Fatal(err)
		}
		clk.t = clk.t.Add(time.Minute)
	}
	if _, _, err := s.Begin(store.Command{ID: "pending"}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		finish(fmt.Sprint("c", i))
	}
	for _, tt := range []struct {
		id   string
		kept bool
	}{{"pending", true}, {"c0", false}, {"c1", false}, {"c2", false}, {"c3", true}, {"c4", true}} {
		if _, ok, _ := s.Get(tt.id); ok != tt.kept {
			t.Errorf("after 6 commands with a bound of 3 (one unfinished): %s kept = %v, want %v", tt.id, ok, tt.kept)
		}
	}

	// Age: finished and delivered entries older than an hour go; unfinished stay.
	if _, _, err := s.Begin(store.Command{ID: "old-pending"}); err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(2 * time.Hour)
	finish("new")
	for _, tt := range []struct {
		id   string
		kept bool
	}{{"c4", false}, {"old-pending", true}, {"new", true}} {
		if _, ok, _ := s.Get(tt.id); ok != tt.kept {
			t.Errorf("after two hours: %s kept = %v, want %v", tt.id, ok, tt.kept)
		}
	}
}

func TestDeployments(t *testing.T) {
	s := open(t, store.Config{})
	if _, ok, err := s.GetDeployment("web"); ok || err != nil {
		t.Fatalf("GetDeployment on empty store = %v, %v", ok, err)
	}
	if err := s.PutDeployment("web", store.Deployment{Spec: []byte{1}, Stopped: true}); err != nil {
		t.Fatal(err)
	}
	d, ok, err := s.GetDeployment("web")
	if !ok || err != nil || !d.Stopped || len(d.Spec) != 1 {
		t.Fatalf("GetDeployment = %+v, %v, %v", d, ok, err)
	}
	all, _ := s.Deployments()
	if len(all) != 1 {
		t.Errorf("Deployments = %v", all)
	}
	if err := s.DeleteDeployment("web"); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.Deployments(); len(all) != 0 {
		t.Errorf("Deployments after delete = %v", all)
	}
}

// TestPulledImagesReadsOlderRecords: an image record written by an agent
// before pulls were recorded (the bare reference of any image a deployment
// used) still reads, as an image the agent did not pull.
func TestPulledImagesReadsOlderRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("images"))
		if err != nil {
			return err
		}
		return b.Put([]byte("sha256:operator"), []byte("operator/tool:1"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, store.Config{Path: path})
	if err := s.TrackPulledImage("sha256:pulled", "registry.test/web:1"); err != nil {
		t.Fatal(err)
	}
	got, err := s.PulledImages()
	want := map[string]string{"sha256:pulled": "registry.test/web:1"}
	if err != nil || !maps.Equal(got, want) {
		t.Errorf("PulledImages = %v, %v; want %v (the older record read, and not as pulled)", got, err, want)
	}
	if err := s.UntrackImage("sha256:pulled"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.PulledImages(); len(got) != 0 {
		t.Errorf("PulledImages after UntrackImage = %v, want none", got)
	}
}

func TestStagedImages(t *testing.T) {
	s := open(t, store.Config{})
	for _, step := range []struct {
		name string
		img  store.Staged
	}{{"web", store.Staged{ID: "sha256:a", Ref: "r/web:1"}}, {"web", store.Staged{ID: "sha256:b", Ref: "r/web:2"}}, {"db", store.Staged{ID: "sha256:c", Ref: "r/db:1"}}} {
		if err := s.StageImage(step.name, step.img); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.UnstageImage("db"); err != nil {
		t.Fatal(err)
	}
	got, err := s.StagedImages()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]store.Staged{"web": {ID: "sha256:b", Ref: "r/web:2"}}; !maps.Equal(got, want) {
		t.Errorf("StagedImages = %v, want %v", got, want)
	}
}
