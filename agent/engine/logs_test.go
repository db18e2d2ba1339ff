package engine

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestLineWriter: lines are split at newlines whatever the writes' sizes,
// the engine's timestamp taken from each line and from each 16 KiB piece
// of a longer one, and a last line without a newline kept.
func TestLineWriter(t *testing.T) {
	ts := "2026-12-01T12:00:00.000000001Z "
	long := strings.Repeat("a", enginePiece) + strings.Repeat("b", enginePiece) + "ccc"
	raw := ts + "one\n" + ts + "\n" +
		ts + long[:enginePiece] + ts + long[enginePiece:2*enginePiece] + ts + long[2*enginePiece:] + "\n" +
		ts + strings.Repeat("d", enginePiece) + ts + "\n" + // exactly one piece, then its newline alone
		"no timestamp\n" + ts + "last"
	want := []string{"one", "", long, strings.Repeat("d", enginePiece), "no timestamp", "last"}
	for _, size := range []int{1, 7, 30, 4096, len(raw)} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			var got []string
			var times []time.Time
			cont := false // the last entry was partial: this one goes on with its line
			w := &lineWriter{emit: func(e LogEntry) error {
				if cont {
					got[len(got)-1] += string(e.Text)
				} else {
					got, times = append(got, string(e.Text)), append(times, e.Time)
				}
				cont = e.Partial
				return nil
			}}
			for b := []byte(raw); len(b) > 0; b = b[min(size, len(b)):] {
				if _, err := w.Write(b[:min(size, len(b))]); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d lines, want %d: %.60q", len(got), len(want), got)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("line %d = %.40q… (%d bytes), want %.40q… (%d bytes)", i, got[i], len(got[i]), want[i], len(want[i]))
				}
				if wantTime := i != 4; times[i].IsZero() == wantTime {
					t.Errorf("line %d: time %v", i, times[i])
				}
			}
		})
	}
}

// TestLineWriterPartialKeepsCharacters: a line longer than MaxLogPiece
// without the engine's pieces is emitted in partial entries, each cut
// after a whole UTF-8 character.
func TestLineWriterPartialKeepsCharacters(t *testing.T) {
	line := strings.Repeat("a", MaxLogPiece-1) + "é" + strings.Repeat("€", MaxLogPiece/3)
	var got []LogEntry
	w := &lineWriter{emit: func(e LogEntry) error { got = append(got, e); return nil }}
	w.started = true // no timestamps: the pieces counter never reaches enginePiece first
	w.piece = -1 << 30
	if _, err := w.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	var whole string
	for i, e := range got {
		if !utf8.Valid(e.Text) || e.Partial != (i < len(got)-1) || len(e.Text) > MaxLogPiece {
			t.Errorf("entry %d: %d bytes, valid %v, partial %v", i, len(e.Text), utf8.Valid(e.Text), e.Partial)
		}
		whole += string(e.Text)
	}
	if whole != line || len(got) < 2 {
		t.Errorf("%d entries, joined %d bytes; want the %d-byte line in several", len(got), len(whole), len(line))
	}
}
