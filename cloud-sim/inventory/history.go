package inventory

import (
	"math"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// MaxSessions is how many of a gateway's latest sessions the inventory
// keeps (and stores) in its record.
const MaxSessions = 10

// Session is one of a gateway's MQTT sessions, as its birth and death
// tell: DisconnectedAt is zero while it lasts, or when its death was
// never seen.
type Session struct {
	Session        uint64
	ConnectedAt    time.Time
	DisconnectedAt time.Time
	DeathReason    string
}

// session is a Session as the record keeps it: times in Unix
// nanoseconds (0: none), 40 bytes.
type session struct {
	id                      uint64
	connected, disconnected int64
	reason                  string
}

// noteBirth records the start of session id (a birth applied); a birth of
// the newest session again changes nothing.
func (g *Gateway) noteBirth(id uint64, connected time.Time) {
	if n := len(g.sessions); n > 0 && g.sessions[n-1].id >= id {
		return
	}
	g.pushSession(session{id: id, connected: state.UnixNano(connected)})
}

// noteDeath records the end of session id, also of an older session than
// the current one (a Will published late); a death of a session newer
// than any birth seen is recorded alone.
func (g *Gateway) noteDeath(id uint64, reason string, at time.Time) {
	for i := len(g.sessions) - 1; i >= 0; i-- {
		if s := &g.sessions[i]; s.id == id {
			if s.disconnected == 0 {
				s.disconnected, s.reason = state.UnixNano(at), reason
			}
			return
		}
	}
	if n := len(g.sessions); n == 0 || g.sessions[n-1].id < id {
		g.pushSession(session{id: id, disconnected: state.UnixNano(at), reason: reason})
	}
}

// pushSession appends s, dropping the oldest beyond MaxSessions; the
// slice grows to MaxSessions at most.
func (g *Gateway) pushSession(s session) {
	if len(g.sessions) == MaxSessions {
		copy(g.sessions, g.sessions[1:])
		g.sessions[MaxSessions-1] = s
		return
	}
	if len(g.sessions) == cap(g.sessions) {
		grown := make([]session, len(g.sessions), min(max(2*cap(g.sessions), 2), MaxSessions))
		copy(grown, g.sessions)
		g.sessions = grown
	}
	g.sessions = append(g.sessions, s)
}

// sessionList is the gateway's latest sessions, newest first.
func (g *Gateway) sessionList() []Session {
	out := make([]Session, len(g.sessions))
	for i, s := range g.sessions {
		out[len(out)-1-i] = Session{Session: s.id, ConnectedAt: state.TimeOf(s.connected), DisconnectedAt: state.TimeOf(s.disconnected), DeathReason: s.reason}
	}
	return out
}

// MetricSamples is how many heartbeat samples the inventory keeps per
// gateway: one a minute, an hour's worth. They are kept in memory only.
const MetricSamples = 60

// Sample is a gateway's heartbeat (Metrics) at one minute: the load
// average over a minute, and the memory and disk in use in percent (0
// when the gateway did not report the totals).
type Sample struct {
	At                time.Time
	Load1             float64
	MemoryUsedPercent float64
	DiskUsedPercent   float64
	Running           uint32
}

// sample is a Sample as the ring keeps it, in 10 bytes: the minute as
// the low 16 bits of the Unix minute (metricRing.newest gives the rest),
// the load in hundredths, the percentages in hundredths of a percent.
type sample struct {
	minute, load, memory, disk, running uint16
}

// metricRing holds a gateway's latest MetricSamples samples, at most one
// a minute: 608 bytes (a 640-byte allocation), made on its first Metrics.
type metricRing struct {
	s      [MetricSamples]sample
	newest uint32 // the Unix minute of the newest sample
	next   uint8  // where the next sample goes
	n      uint8  // how many samples s holds
}

// add records m, received at at, unless the ring has a sample of the
// same minute. A gap of more than an hour empties the ring first, so
// consecutive samples are at most an hour apart and every sample's minute
// is within 2^16 minutes of the newest.
func (r *metricRing) add(m *fleetv1.Metrics, at time.Time) {
	minute := uint32(at.Unix() / 60)
	if r.n > 0 && minute <= r.newest {
		return
	}
	if r.n > 0 && minute-r.newest > MetricSamples {
		r.n, r.next = 0, 0
	}
	r.s[r.next] = sample{minute: uint16(minute), load: clamp16(m.GetLoad1() * 100),
		memory: usedBasisPoints(m.GetMemoryTotalBytes(), m.GetMemoryAvailableBytes()),
		disk:   usedBasisPoints(m.GetDiskTotalBytes(), m.GetDiskFreeBytes()), running: clamp16(float64(m.GetRunningCount()))}
	r.newest, r.next = minute, (r.next+1)%MetricSamples
	r.n = min(r.n+1, MetricSamples)
}

// samples lists the samples of the hour before now, oldest first.
func (r *metricRing) samples(now time.Time) []Sample {
	out := []Sample{}
	if r == nil {
		return out
	}
	from := now.Add(-time.Hour)
	for i := range int(r.n) {
		s := r.s[(int(r.next)-int(r.n)+i+MetricSamples)%MetricSamples]
		minute := r.newest - uint32(uint16(r.newest)-s.minute)
		at := time.Unix(int64(minute)*60, 0).UTC()
		if at.Before(from) {
			continue
		}
		out = append(out, Sample{At: at, Load1: float64(s.load) / 100, MemoryUsedPercent: float64(s.memory) / 100,
			DiskUsedPercent: float64(s.disk) / 100, Running: uint32(s.running)})
	}
	return out
}

func clamp16(v float64) uint16 {
	return uint16(min(max(math.Round(v), 0), math.MaxUint16))
}

// usedBasisPoints is the share of total not free, in hundredths of a
// percent; 0 when total is unknown.
func usedBasisPoints(total, free uint64) uint16 {
	if total == 0 || free > total {
		return 0
	}
	return clamp16(float64(total-free) / float64(total) * 10000)
}
