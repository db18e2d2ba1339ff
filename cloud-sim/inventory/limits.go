package inventory

import (
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// The default limits (see Limits).
const (
	DefaultMaxDeployments = 256
	DefaultEventRate      = 5
	DefaultEventBurst     = 50
	// maxListed bounds a birth's labels, groups, capabilities and
	// registries: far more than any gateway has.
	maxListed = 256
	// maxText bounds each text a gateway reports (an image, a digest),
	// maxMessage a status message; longer ones are cut. With maxBirth,
	// they keep a gateway's stored record under NATS's 1 MiB maximum
	// message: 256 deployments of 2.3 KiB at most and a birth's labels.
	maxText    = 512
	maxMessage = 1024
	// maxBirth is the largest birth accepted, in bytes (encoded): a birth
	// of 256 deployments is about 50 KiB.
	maxBirth = 256 << 10
	// reportEvery is how often a limit a gateway keeps exceeding is
	// reported on the change stream again.
	reportEvery = time.Minute
)

// Limits bound what one gateway may make the inventory hold or do. Zero
// values take the defaults.
type Limits struct {
	// MaxDeployments is how many deployments one gateway may report: a
	// birth listing more is refused whole, a status of one more
	// deployment (a new status topic) is refused.
	MaxDeployments int
	// EventRate is how many events a second one gateway may publish on
	// average, EventBurst how many at once; events beyond are dropped.
	EventRate  float64
	EventBurst int
}

func (l Limits) withDefaults() Limits {
	if l.MaxDeployments <= 0 {
		l.MaxDeployments = DefaultMaxDeployments
	}
	if l.EventRate <= 0 {
		l.EventRate = DefaultEventRate
	}
	if l.EventBurst <= 0 {
		l.EventBurst = DefaultEventBurst
	}
	return l
}

// Limit names a limit a gateway exceeded.
type Limit string

// The limits a gateway can exceed.
const (
	LimitDeployments Limit = "deployments"
	LimitBirth       Limit = "birth" // a birth's size and lists
	LimitEvents      Limit = "events"
)

// Refusal is what the inventory refused of a gateway for one limit: the
// latest refusal and how many there were.
type Refusal struct {
	Limit   Limit
	Message string
	Count   uint64
	First   time.Time
	Last    time.Time

	reported time.Time // when last sent on the change stream
}

// refuse reports why msg, published on t, exceeds the limits ("" when it
// does not). It takes an event from the gateway's event budget.
func (g *Gateway) refuse(l Limits, t topic.Topic, msg any, at time.Time) (Limit, string) {
	switch m := msg.(type) {
	case *fleetv1.Birth:
		if n := proto.Size(m); n > maxBirth {
			return LimitBirth, fmt.Sprintf("birth refused: %d bytes, over the limit of %d", n, maxBirth)
		}
		if n := len(m.GetDeployments()); n > l.MaxDeployments {
			return LimitDeployments, fmt.Sprintf("birth refused: it lists %d deployments, over the limit of %d a gateway (cloud-sim serve --gateway-max-deployments)", n, l.MaxDeployments)
		}
		lists := [...]struct {
			what string
			n    int
		}{{"labels", len(m.GetLabels())}, {"groups", len(m.GetGroups())}, {"capabilities", len(m.GetCapabilities())}, {"registries", len(m.GetRegistries())}}
		for _, list := range lists {
			if list.n > maxListed {
				return LimitBirth, fmt.Sprintf("birth refused: it lists %d %s, over the limit of %d", list.n, list.what, maxListed)
			}
		}
	case *fleetv1.DeploymentStatus:
		if _, known := g.Deployments[t.Deployment]; !known && len(g.Deployments) >= l.MaxDeployments {
			return LimitDeployments, fmt.Sprintf("status of deployment %q refused: the gateway already reports %d deployments, the limit (cloud-sim serve --gateway-max-deployments)", t.Deployment, len(g.Deployments))
		}
	case *fleetv1.Event:
		if !g.takeEvent(l, at) {
			return LimitEvents, fmt.Sprintf("events dropped: over the limit of %g a second (burst %d) from one gateway (cloud-sim serve --gateway-event-rate, --gateway-event-burst)", l.EventRate, l.EventBurst)
		}
	}
	return "", ""
}

// takeEvent takes one event from the gateway's token bucket.
func (g *Gateway) takeEvent(l Limits, at time.Time) bool {
	if g.eventsAt.IsZero() {
		g.events = float64(l.EventBurst)
	} else if dt := at.Sub(g.eventsAt).Seconds(); dt > 0 {
		g.events = min(float64(l.EventBurst), g.events+dt*l.EventRate)
	}
	if at.After(g.eventsAt) {
		g.eventsAt = at
	}
	if g.events < 1 {
		return false
	}
	g.events--
	return true
}

// noteRefusal records a refusal on the gateway; it returns the change to
// publish, if it is time to report this limit again.
func (g *Gateway) noteRefusal(limit Limit, msg string, at time.Time) (changes.Change, bool) {
	var r *Refusal
	for i := range g.Refused {
		if g.Refused[i].Limit == limit {
			r = &g.Refused[i]
		}
	}
	if r == nil {
		g.Refused = append(g.Refused, Refusal{Limit: limit, First: at})
		r = &g.Refused[len(g.Refused)-1]
	}
	r.Message, r.Last = msg, at
	r.Count++
	if !r.reported.IsZero() && at.Sub(r.reported) < reportEvery {
		return changes.Change{}, false
	}
	r.reported = at
	return changes.Change{Kind: "gateway.refused", Severity: changes.Warning, Tenant: g.Tenant, Gateway: g.ID, Message: msg, At: at}, true
}

// clip cuts s to at most n bytes, on a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
