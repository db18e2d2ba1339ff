package inventory

import (
	"slices"
	"strings"
)

// Page is one page of the gateways a filter selects, in natural order
// (CompareGateways), with counts over all of them.
type Page struct {
	Gateways []*Gateway
	// Total, Online and Stale count every gateway the filter selects,
	// not only this page's.
	Total, Online, Stale int
}

// ListPage returns copies of the gateways f selects, from the offset-th
// (from 0) on, at most limit of them (all when limit is 0), in natural
// order of tenant and id. It copies only the page's records and sorts
// only when gateways were added since the last call, so a page of a large
// inventory costs one pass over it.
func (inv *Inventory) ListPage(f Filter, offset, limit int) Page {
	order := inv.ordered()
	now := inv.now()
	var p Page
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	for _, g := range order {
		if !inv.match(f, g) {
			continue
		}
		if p.Total >= offset && (limit == 0 || p.Total < offset+limit) {
			p.Gateways = append(p.Gateways, inv.view(g, now))
		}
		p.Total++
		if g.Online {
			p.Online++
			if now.Sub(g.LastSeen) > inv.staleAfter {
				p.Stale++
			}
		}
	}
	return p
}

// ordered returns every gateway in natural order. Gateways are never
// removed and their tenant and id never change, so the order is sorted
// again only when the inventory grew, and outside inv.mu.
func (inv *Inventory) ordered() []*Gateway {
	inv.orderMu.Lock()
	defer inv.orderMu.Unlock()
	inv.mu.RLock()
	if len(inv.order) == len(inv.gateways) {
		inv.mu.RUnlock()
		return inv.order
	}
	order := make([]*Gateway, 0, len(inv.gateways))
	for _, g := range inv.gateways {
		order = append(order, g)
	}
	inv.mu.RUnlock()
	slices.SortFunc(order, func(a, b *Gateway) int { return CompareGateways(a.Tenant, a.ID, b.Tenant, b.ID) })
	inv.order = order
	return order
}

// containsFold reports whether s contains sub, ASCII letters compared
// without case (ids are A-Z a-z 0-9 . _ -).
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
