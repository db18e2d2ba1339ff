package broker

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// lockedBuffer is a log sink the broker's goroutines may write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStoreStartsQuietly: a broker on a new store, and again on the store
// it left, logs no error (mochi's hook used to log "failed to get data …
// key not found SYS" on every new store).
func TestStoreStartsQuietly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	for _, run := range []string{"new store", "reopened store"} {
		var logs lockedBuffer
		b, err := Start(Config{StorePath: path, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err != nil {
			t.Fatalf("%s: %v", run, err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("%s: close: %v", run, err)
		}
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "level=ERROR") {
				t.Errorf("%s: got log %q, want no ERROR", run, strings.TrimSpace(line))
			}
		}
	}
}
