package inventory

import (
	"fmt"
	"strings"
)

// Selector is a label selector: comma-separated requirements "k=v",
// "k==v", "k!=v", "k" (has the label) and "!k" (has not).
type Selector []requirement

type requirement struct {
	key, value string
	op         op
}

type op int

const (
	equals op = iota
	notEquals
	exists
	notExists
)

// ParseSelector parses s; "" selects everything.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var r requirement
		switch {
		case strings.Contains(part, "!="):
			k, v, _ := strings.Cut(part, "!=")
			r = requirement{key: strings.TrimSpace(k), value: strings.TrimSpace(v), op: notEquals}
		case strings.Contains(part, "="):
			k, v, _ := strings.Cut(part, "=")
			r = requirement{key: strings.TrimSpace(k), value: strings.TrimPrefix(strings.TrimSpace(v), "="), op: equals}
			r.value = strings.TrimSpace(r.value)
		case strings.HasPrefix(part, "!"):
			r = requirement{key: strings.TrimSpace(part[1:]), op: notExists}
		default:
			r = requirement{key: part, op: exists}
		}
		if r.key == "" || strings.ContainsAny(r.key, "=! ") {
			return nil, fmt.Errorf("selector %q: requirement %q has no label key; write k=v, k!=v, k or !k separated by commas", s, part)
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.key]
		switch r.op {
		case equals:
			if !ok || v != r.value {
				return false
			}
		case notEquals:
			if ok && v == r.value {
				return false
			}
		case exists:
			if !ok {
				return false
			}
		case notExists:
			if ok {
				return false
			}
		}
	}
	return true
}
