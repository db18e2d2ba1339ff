package credential

import (
	"context"
	"regexp"
	"sync"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TokenSource gets a new ECR token for an ecr credential in region: the
// AWS SDK in process (package awsecr, the cloud) or the fleet-agent-ecr
// helper (package agent/ecrexec, the agent, which does not link the SDK).
// Errors wrap an errdefs kind and never contain the secret key.
type TokenSource func(ctx context.Context, c *fleetv1.EcrAuth, region string, now time.Time) (*Token, error)

// ecrHost matches an ECR registry host and captures its region.
var ecrHost = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[0-9]{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$`)
})

// ECRRegion is the credential's region, or the one in the host.
func ECRRegion(c *fleetv1.EcrAuth, host string) (string, bool) {
	if c.GetRegion() != "" {
		return c.GetRegion(), true
	}
	if m := ecrHost().FindStringSubmatch(host); m != nil {
		return m[1], true
	}
	return "", false
}

// Token is a registry login with its expiry and the time to replace it.
type Token struct {
	User, Password string
	Expires        time.Time
	RefreshAt      time.Time
}

// NewToken is the token fetched at now that expires at expires (12 hours
// after now, ECR's lifetime, when zero), to be replaced a margin before.
func NewToken(user, password string, expires, now time.Time) *Token {
	if expires.IsZero() {
		expires = now.Add(12 * time.Hour)
	}
	return &Token{User: user, Password: password, Expires: expires, RefreshAt: expires.Add(-refreshMargin(expires.Sub(now)))}
}

// refreshMargin is how long before its expiry a token is replaced: a
// quarter of its lifetime, at most 30 minutes (11.5 h into a 12 h token).
func refreshMargin(lifetime time.Duration) time.Duration {
	return min(lifetime/4, 30*time.Minute)
}
