// Package egress is the cloud's policy for the connections it opens to
// hosts its users name (the registry check): public addresses only, plus
// an allow-list the operator gives. The policy decides on the resolved
// address as each socket is dialled (net.Dialer.Control), so neither a
// redirect nor a name that resolves to another address the second time
// (DNS rebinding) gets round it.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// ErrRefused is the error of a dial the policy refuses.
var ErrRefused = errors.New("refused")

// nonPublic are the ranges, besides loopback, private, link-local,
// unspecified and multicast addresses, that are not on the public
// internet: shared (carrier-grade NAT) space, IETF protocol assignments,
// benchmarking, reserved, and NAT64 prefixes that map onto IPv4.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

// Policy allows dials to public addresses and to its allow-list. The zero
// value allows public addresses only. It is read-only once built.
type Policy struct {
	// Setting names where the allow-list comes from, for messages
	// ("--registry-check-allow").
	Setting  string
	prefixes []netip.Prefix
	addrs    map[netip.AddrPort]bool
	names    map[string]bool // host:port as dialled, lowercase
}

// New builds a policy whose allow-list holds entries: CIDR prefixes
// (10.20.0.0/16), addresses (10.20.0.5, fd00::5) and host:port pairs
// (127.0.0.1:5000, [::1]:5000, registry.lan:5000). A host name entry
// trusts that name's DNS: the address it resolves to is not checked.
// Errors name setting.
func New(setting string, entries []string) (*Policy, error) {
	p := &Policy{Setting: setting}
	for _, e := range entries {
		if err := p.add(strings.TrimSpace(e)); err != nil {
			return nil, fmt.Errorf("%s %q: %w", setting, e, err)
		}
	}
	return p, nil
}

func (p *Policy) add(e string) error {
	if pfx, err := netip.ParsePrefix(e); err == nil {
		p.prefixes = append(p.prefixes, pfx.Masked())
		return nil
	}
	if a, err := netip.ParseAddr(e); err == nil {
		p.prefixes = append(p.prefixes, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		return nil
	}
	if ap, err := netip.ParseAddrPort(e); err == nil {
		if p.addrs == nil {
			p.addrs = map[netip.AddrPort]bool{}
		}
		p.addrs[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
		return nil
	}
	host, port, err := net.SplitHostPort(e)
	if err != nil || host == "" || port == "" || strings.ContainsAny(host, "/ ") {
		return errors.New("is not a CIDR prefix (10.0.0.0/8), an address (10.0.0.5) or host:port (registry.lan:5000)")
	}
	if p.names == nil {
		p.names = map[string]bool{}
	}
	p.names[strings.ToLower(e)] = true
	return nil
}

// Check refuses ap unless it is public or allow-listed.
func (p *Policy) Check(ap netip.AddrPort) error {
	a := ap.Addr().Unmap()
	if p != nil {
		if p.addrs[netip.AddrPortFrom(a, ap.Port())] {
			return nil
		}
		for _, pfx := range p.prefixes {
			if pfx.Contains(a) {
				return nil
			}
		}
	}
	if what := nonPublicKind(a); what != "" {
		setting := "the allow-list"
		if p != nil && p.Setting != "" {
			setting = p.Setting
		}
		return fmt.Errorf("%w: %s is a %s address, which the cloud does not connect to; allow it with %s", ErrRefused, ap, what, setting)
	}
	return nil
}

// nonPublicKind names the kind of a that is not on the public internet,
// "" for a public address.
func nonPublicKind(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "invalid"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	case a.IsPrivate():
		return "private"
	case !a.IsGlobalUnicast():
		return "non-unicast"
	}
	for _, pfx := range nonPublic {
		if pfx.Contains(a) {
			return "reserved"
		}
	}
	return ""
}

// DialContext dials addr ("host:port"), refusing, at the moment each
// resolved address is dialled, the ones the policy does not allow.
func (p *Policy) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	if p == nil || !p.names[strings.ToLower(addr)] {
		d.Control = p.control
	}
	return d.DialContext(ctx, network, addr)
}

// control checks the address a socket is about to connect to.
func (p *Policy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s is not an address", ErrRefused, address)
	}
	return p.Check(ap)
}
