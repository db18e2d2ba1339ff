package gateway

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/fleet-agent/fleet/protocol/cmdsig"
)

// keysPoll is how often the command-signing keys file is looked at.
const keysPoll = 30 * time.Second

// watchKeys reloads the command-signing keys from file into v when the
// file changes, so that a gateway learns a rotated key (written by the
// operator's configuration management) without a restart. A file that
// cannot be read or parsed leaves the keys as they are.
func watchKeys(ctx context.Context, log *slog.Logger, file string, v *cmdsig.Verifier) {
	stamp := func() (time.Time, int64) {
		fi, err := os.Stat(file)
		if err != nil {
			return time.Time{}, -1
		}
		return fi.ModTime(), fi.Size()
	}
	mtime, size := stamp()
	t := time.NewTicker(keysPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, s := stamp()
		if m.Equal(mtime) && s == size {
			continue
		}
		mtime, size = m, s
		raw, err := os.ReadFile(file)
		if err != nil {
			log.Error("command-signing keys file unreadable; keeping the keys in use", "file", file, "err", err)
			continue
		}
		next, err := cmdsig.ParseKeys(raw)
		if err != nil {
			log.Error("command-signing keys file invalid; keeping the keys in use", "file", file, "err", err)
			continue
		}
		v.Replace(next)
		log.Info("command-signing keys reloaded", "file", file, "keys", v.IDs())
	}
}
