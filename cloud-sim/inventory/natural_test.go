package inventory

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCompareNatural(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"sim-2", "sim-10", -1},
		{"sim-10", "sim-2", 1},
		{"sim-2", "sim-2", 0},
		{"gw-9", "gw-10", -1},
		{"a", "b", -1},
		{"sim-1", "sim-1a", -1},  // a prefix first
		{"sim-1a", "sim-1b", -1}, // then the rest lexically
		{"sim-2a", "sim-10", -1}, // the number decides before the rest
		{"rack2-gw10", "rack2-gw9", 1},
		{"rack10-gw1", "rack9-gw2", 1},
		{"sim-02", "sim-2", -1},                                 // equal numbers: plain string order keeps it total
		{"sim-007", "sim-7x", -1},                               // ... but only when the rest is equal
		{"a99999999999999999999", "a100000000000000000000", -1}, // beyond int64
		{"", "a", -1},
		{"1", "a", -1}, // a digit before a letter, as bytes
		{"Sim-1", "sim-1", -1},
	}
	for _, tt := range tests {
		if got := CompareNatural(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareNatural(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := CompareNatural(tt.b, tt.a); got != -tt.want {
			t.Errorf("CompareNatural(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
}

func TestGatewayOrder(t *testing.T) {
	type gw struct{ tenant, id string }
	want := []gw{
		{"acme", "gw-1"}, {"acme", "gw-2"}, {"acme", "gw-10"},
		{"sim", "sim-1"}, {"sim", "sim-2"}, {"sim", "sim-9"}, {"sim", "sim-10"}, {"sim", "sim-11"}, {"sim", "sim-100"},
		{"tenant2", "a"}, {"tenant10", "a"},
	}
	got := slices.Clone(want)
	rand.Shuffle(len(got), func(i, j int) { got[i], got[j] = got[j], got[i] })
	slices.SortFunc(got, func(a, b gw) int { return CompareGateways(a.tenant, a.id, b.tenant, b.id) })
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(gw{})); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}
