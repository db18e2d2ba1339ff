package logs_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/logs"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// counterImage builds testdata/counter (static) into an image, pushes it
// to an in-process registry and pulls it into the engine.
func counterImage(t *testing.T, d *engine.Docker) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "counter")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./testdata/counter")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build counter: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := registry.BinaryImage("counter", data, []string{"/counter"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := testimage.NewRegistry(t)
	if _, err := reg.Server.Push(t.Context(), "test/counter", "1", img); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/test/counter:1"
	if err := d.Pull(t.Context(), ref, "", nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.RemoveImage(context.Background(), ref) })
	return ref
}

// runCounter runs a container of deployment name from ref with env, on
// network none.
func runCounter(t *testing.T, d *engine.Docker, ref, name string, env map[string]string) string {
	t.Helper()
	spec := &fleetv1.DeploymentSpec{Name: name, Revision: 1, Image: ref, Env: env, NetworkMode: "none"}
	id, err := d.Create(t.Context(), engine.ContainerName(name, 1), spec, engine.Host{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	return id
}

// awaitLines waits until container id has written n lines.
func awaitLines(t *testing.T, d *engine.Docker, id string, n int) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("%d lines from %s", n, id[:12]), func() bool {
		got := 0
		err := d.ContainerLogs(t.Context(), id, engine.LogOptions{Tail: -1}, func(engine.LogEntry) error { got++; return nil })
		return err == nil && got >= n
	})
}

func stream(t *testing.T, cfg logs.Config, req logs.Request) (*logs.Stream, *recorder, *logs.Manager) {
	t.Helper()
	pub := &recorder{}
	cfg.Publisher, cfg.Gateway = pub, "gw"
	m, err := logs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req.ID = "req-1"
	s, err := m.Open(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	return s, pub, m
}

// TestDockerLogs streams real containers' output: tail N is exactly the
// last N lines, stdout and stderr told apart, a line over the engine's 16
// KiB pieces whole again (without their timestamps: it failed so); the
// rate limit drops lines and says how many; a follow receives new lines
// and ends CANCELED on cancel, CONTAINER_GONE when the container is
// removed.
func TestDockerLogs(t *testing.T) {
	testenv.DockerClient(t)
	owner := fmt.Sprintf("test/logs-%d", time.Now().UnixNano())
	d, err := engine.NewDocker("", owner, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs, _ := d.List(context.Background())
		for _, c := range cs {
			d.Remove(context.Background(), c.ID)
		}
		d.Close()
	})
	ref := counterImage(t, d)
	counted := runCounter(t, d, ref, "counted", map[string]string{"COUNT": "500"})
	big := runCounter(t, d, ref, "big", map[string]string{"COUNT": "200", "SIZE": "2048"})
	ticker := runCounter(t, d, ref, "ticker", map[string]string{"INTERVAL": "100ms"})
	long := runCounter(t, d, ref, "long", map[string]string{"COUNT": "2", "SIZE": "40000"})
	mixed := runCounter(t, d, ref, "mixed", map[string]string{"COUNT": "10", "ERR_EVERY": "5"})
	awaitLines(t, d, counted, 500)
	awaitLines(t, d, mixed, 10)
	awaitLines(t, d, long, 2)
	awaitLines(t, d, big, 200)

	t.Run("tail", func(t *testing.T) {
		s, pub, _ := stream(t, logs.Config{Engine: d, Rate: -1}, logs.Request{Deployment: "counted", Tail: 10})
		if err := s.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		var want []string
		for i := 490; i < 500; i++ {
			want = append(want, fmt.Sprintf("line %04d", i))
		}
		if got := pub.lines(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("tail 10 = %q, want %q", got, want)
		}
		if last := pub.last(t); last.GetEnded() != fleetv1.LogChunk_COMPLETE {
			t.Errorf("ended %v, want COMPLETE", last.GetEnded())
		}
	})

	t.Run("stdout and stderr", func(t *testing.T) {
		// The engine records each stream as it reads it: the order across
		// the two is not the program's.
		s, pub, _ := stream(t, logs.Config{Engine: d, Rate: -1}, logs.Request{Deployment: "mixed"})
		if err := s.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		got := map[string]fleetv1.LogLine_Stream{}
		for _, c := range pub.all() {
			for _, l := range c.GetLines() {
				got[l.GetText()] = l.GetStream()
				if l.GetService() != "mixed" || l.GetTimestamp() == nil {
					t.Errorf("line %q: service %q timestamp %v; want mixed, a timestamp", l.GetText(), l.GetService(), l.GetTimestamp())
				}
			}
		}
		for i := range 10 {
			want := fleetv1.LogLine_STDOUT
			if i%5 == 4 {
				want = fleetv1.LogLine_STDERR
			}
			if text := fmt.Sprintf("line %04d", i); got[text] != want {
				t.Errorf("%s: %v, want %v", text, got[text], want)
			}
		}
	})

	t.Run("long lines", func(t *testing.T) {
		// The engine stores a line over 16 KiB in pieces, each with a
		// timestamp of its own; the stream gives the line back whole, cut
		// at 16 KiB.
		s, pub, _ := stream(t, logs.Config{Engine: d, Rate: -1}, logs.Request{Deployment: "long", Tail: 100})
		if err := s.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		got := strings.Join(pub.lines(), "|")
		want := "line 0000 " + strings.Repeat("x", 40000-10)
		want = want[:16384] + "|" + want[16384:32768] + "|" + want[32768:]
		want = want + "|" + strings.Replace(want, "0000", "0001", 1)
		if got != want {
			t.Errorf("long lines: got %d bytes %.40q…, want %d bytes (2 lines in 3 pieces each)", len(got), got, len(want))
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		s, pub, _ := stream(t, logs.Config{Engine: d, Rate: 16 << 10, Burst: 16 << 10}, logs.Request{Deployment: "big", Tail: 200})
		if err := s.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		var sent, dropped, droppedBytes uint64
		for _, c := range pub.all() {
			sent += uint64(len(c.GetLines()))
			dropped += c.GetDroppedLines()
			droppedBytes += c.GetDroppedBytes()
		}
		// 400 KiB at once under 16 KiB/s with a 16 KiB burst: 7 lines (2048
		// bytes and the overhead each) and what the bucket refills while the
		// rest is read.
		if sent+dropped != 200 || sent < 7 || sent > 40 || droppedBytes != dropped*2048 {
			t.Errorf("sent %d, dropped %d (%d bytes); want 200 in all, 7 to 40 sent, 2048 bytes per dropped line", sent, dropped, droppedBytes)
		}
	})

	t.Run("follow and cancel", func(t *testing.T) {
		s, pub, m := stream(t, logs.Config{Engine: d, Rate: -1}, logs.Request{Deployment: "ticker", Tail: 1, Follow: true})
		done := make(chan error, 1)
		go func() { done <- s.Run(t.Context()) }()
		testenv.Eventually(t, "5 ticks", func() bool { return len(pub.lines()) >= 5 })
		if !m.Cancel(t.Context(), "req-1") {
			t.Fatal("Cancel did not find the stream")
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		lines := pub.lines()
		var first int
		fmt.Sscanf(lines[0], "tick %d", &first)
		for i, l := range lines {
			if want := fmt.Sprintf("tick %04d", first+i); l != want {
				t.Fatalf("line %d = %q, want %q (new lines in order, none lost)", i, l, want)
			}
		}
		if last := pub.last(t); last.GetEnded() != fleetv1.LogChunk_CANCELED {
			t.Errorf("ended %v, want CANCELED", last.GetEnded())
		}
	})

	t.Run("container removed", func(t *testing.T) {
		s, pub, _ := stream(t, logs.Config{Engine: d, Rate: -1}, logs.Request{Deployment: "ticker", Tail: 1, Follow: true})
		done := make(chan error, 1)
		go func() { done <- s.Run(t.Context()) }()
		testenv.Eventually(t, "2 ticks", func() bool { return len(pub.lines()) >= 2 })
		if err := d.Remove(t.Context(), ticker); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if last := pub.last(t); last.GetEnded() != fleetv1.LogChunk_CONTAINER_GONE {
			t.Errorf("ended %v (%s), want CONTAINER_GONE", last.GetEnded(), last.GetMessage())
		}
	})
}
