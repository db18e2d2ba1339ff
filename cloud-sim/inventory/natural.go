package inventory

import (
	"cmp"
	"strings"
)

// CompareNatural orders ids as people read them: runs of digits compare
// as numbers (sim-2 before sim-10), everything else byte by byte. Ids
// equal that way (sim-02, sim-2) fall back to plain string order, so the
// order is total.
func CompareNatural(a, b string) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if isDigit(a[i]) && isDigit(b[j]) {
			si, sj := i, j
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			// Without leading zeros, a longer run is a larger number; of
			// equal length, the digits compare as strings. No overflow.
			na, nb := strings.TrimLeft(a[si:i], "0"), strings.TrimLeft(b[sj:j], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			continue
		}
		if c := cmp.Compare(a[i], b[j]); c != 0 {
			return c
		}
		i++
		j++
	}
	// One ran out: a prefix comes first.
	if c := cmp.Compare(len(a)-i, len(b)-j); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// CompareGateways orders gateways by tenant, then id, both naturally.
func CompareGateways(tenantA, idA, tenantB, idB string) int {
	if c := CompareNatural(tenantA, tenantB); c != 0 {
		return c
	}
	return CompareNatural(idA, idB)
}
