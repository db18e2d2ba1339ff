package console

import (
	"testing"
	"time"
)

func TestInOrAgo(t *testing.T) {
	now := mustTime(t, "2026-01-02T10:00:00Z")
	for _, tc := range []struct{ at, want string }{
		{"2026-01-02T21:58:00Z", "in 11h 58m"},
		{"2026-01-02T10:04:10Z", "in 4m"},
		{"2026-01-02T09:57:00Z", "3m ago"},
		{"2026-01-05T12:00:00Z", "in 3d 2h"},
		{"2026-01-02T21:59:50Z", "in 12h"},
	} {
		if got := inOrAgo(now, mustTime(t, tc.at)); got != tc.want {
			t.Errorf("inOrAgo(%s) = %q, want %q", tc.at, got, tc.want)
		}
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
