package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleet-agent/fleet/protocol/cmdsig"
)

// TestWatchKeys: a rotated key written to the keys file is trusted within
// a poll, without a restart; a file that is broken or gone leaves the keys
// in use.
func TestWatchKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		newKey := func() cmdsig.PublicKey {
			pub, _, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return cmdsig.Public(pub)
		}
		file := filepath.Join(t.TempDir(), "keys.json")
		write := func(raw []byte) {
			if err := os.WriteFile(file, raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		set := func(keys ...cmdsig.PublicKey) []byte {
			b, _ := json.Marshal(cmdsig.KeySet{Keys: keys})
			return b
		}
		old, rotated := newKey(), newKey()
		write(set(old))
		v, err := cmdsig.ParseKeys(set(old))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go watchKeys(ctx, slog.New(slog.DiscardHandler), file, v)
		synctest.Wait()

		steps := []struct {
			name   string
			change func()
			want   []string
		}{
			{"rotation staged: both keys", func() { write(set(old, rotated)) }, []string{old.ID, rotated.ID}},
			{"broken file: keys kept", func() { write([]byte("{not json")) }, []string{old.ID, rotated.ID}},
			{"old key retired", func() { write(set(rotated)) }, []string{rotated.ID}},
			{"file removed: keys kept", func() { os.Remove(file) }, []string{rotated.ID}},
		}
		for _, s := range steps {
			s.change()
			time.Sleep(keysPoll + time.Second)
			synctest.Wait()
			want := slices.Clone(s.want)
			slices.Sort(want)
			if got := v.IDs(); !slices.Equal(got, want) {
				t.Errorf("%s: keys %v, want %v", s.name, got, want)
			}
		}
	})
}
