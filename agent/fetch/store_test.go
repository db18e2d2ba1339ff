package fetch

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func digestOf(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return h
}

// A blob enters the store only when its bytes hash to its digest; a partial
// file reopened continues its hash from the bytes on disk.
func TestStoreCommit(t *testing.T) {
	good := []byte("the layer's bytes")
	tests := []struct {
		name    string
		writes  [][]byte // written in turn, the partial reopened between them
		wantErr error
	}{
		{name: "whole", writes: [][]byte{good}},
		{name: "resumed after a reopen", writes: [][]byte{good[:5], good[5:]}},
		{name: "a flipped byte", writes: [][]byte{append([]byte("T"), good[1:]...)}, wantErr: ErrDigestMismatch},
		{name: "short", writes: [][]byte{good[:5]}, wantErr: ErrDigestMismatch},
		{name: "long", writes: [][]byte{good, []byte("!")}, wantErr: ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			h := digestOf(good)
			var p *partial
			for i, w := range tt.writes {
				if p, err = s.openPartial(h); err != nil {
					t.Fatal(err)
				}
				if _, err := p.Write(w); err != nil {
					t.Fatal(err)
				}
				if i < len(tt.writes)-1 {
					p.close()
				}
			}
			err = s.commit(p, h, int64(len(good)))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("commit = %v, want %v", err, tt.wantErr)
			}
			if got, want := s.Has(h), tt.wantErr == nil; got != want {
				t.Errorf("Has = %v, want %v", got, want)
			}
			if _, err := os.Stat(s.partialPath(h)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("partial file still there after commit: %v", err)
			}
			if tt.wantErr == nil {
				b, _ := os.ReadFile(s.blobPath(h))
				if sha256.Sum256(b) != sha256.Sum256(good) {
					t.Errorf("stored blob = %q, want %q", b, good)
				}
			}
		})
	}
}

func TestNewStoreNeedsADir(t *testing.T) {
	if _, err := NewStore(""); err == nil {
		t.Errorf("NewStore(\"\") succeeded")
	}
}
