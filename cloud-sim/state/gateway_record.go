package state

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/state/recordpb"
)

// A gateway's record is stored as protobuf (recordpb.Gateway): the
// inventory writes one whenever what a gateway reported changes, and every
// other replica reads each one, so its encoding is on the ingest path.
// As protobuf a record takes a third of its JSON's bytes, three quarters
// of its time to encode and two fifths of its time to decode
// (BenchmarkGatewayRecord). Records written as JSON, by versions before
// it, are read as they are and written again as protobuf.

// MarshalBinary encodes g as the store keeps it.
func (g *Gateway) MarshalBinary() ([]byte, error) {
	return proto.Marshal(g.record())
}

// UnmarshalBinary decodes a stored gateway record, protobuf or JSON (a
// JSON record starts with '{', which no protobuf record of this schema
// does: it would be field 15 as a group).
func (g *Gateway) UnmarshalBinary(data []byte) error {
	if len(data) > 0 && data[0] == '{' {
		*g = Gateway{}
		return json.Unmarshal(data, g)
	}
	var r recordpb.Gateway
	if err := proto.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("gateway record: %w", err)
	}
	*g = gatewayOf(&r)
	return nil
}

func (g *Gateway) record() *recordpb.Gateway {
	r := &recordpb.Gateway{Tenant: g.Tenant, Id: g.ID, Online: g.Online, Session: g.Session, DeathSession: g.DeathSession,
		DeathReason: g.DeathReason, ConnectedAt: UnixNano(g.ConnectedAt), LastSeen: UnixNano(g.LastSeen), AgentVersion: g.AgentVersion,
		ProtocolVersion: g.ProtocolVersion, Simulated: g.Simulated, ReportedLabels: g.ReportedLabels, ReportedGroups: g.ReportedGroups,
		Capabilities: g.Capabilities, PublicKey: g.PublicKey, Delivered: g.Delivered, Running: g.Running}
	if h := g.Host; h != nil {
		r.Host = &recordpb.Host{Hostname: h.Hostname, Os: h.OS, Arch: h.Arch, Cpus: h.CPUs, MemoryBytes: h.MemoryBytes}
	}
	if e := g.Engine; e != nil {
		r.Engine = &recordpb.Engine{Name: e.Name, Version: e.Version, Reachable: e.Reachable, Error: e.Error}
	}
	if g.Deployments != nil {
		r.Deployments = make(map[string]*recordpb.Deployment, len(g.Deployments))
		for k, d := range g.Deployments {
			r.Deployments[k] = d.record()
		}
	}
	for _, x := range g.Registries {
		r.Registries = append(r.Registries, &recordpb.Registry{Registry: x.Registry, Kind: x.Kind, Username: x.Username,
			Fingerprint: x.Fingerprint, ExpiresAt: UnixNano(x.ExpiresAt), Warning: x.Warning})
	}
	for _, x := range g.Refused {
		r.Refused = append(r.Refused, &recordpb.Refusal{Limit: x.Limit, Message: x.Message, Count: x.Count, First: UnixNano(x.First), Last: UnixNano(x.Last)})
	}
	for _, x := range g.Sessions {
		r.Sessions = append(r.Sessions, &recordpb.Session{Session: x.Session, ConnectedAt: UnixNano(x.ConnectedAt),
			DisconnectedAt: UnixNano(x.DisconnectedAt), DeathReason: x.DeathReason})
	}
	return r
}

func (d *Deployment) record() *recordpb.Deployment {
	if d == nil {
		return nil
	}
	r := &recordpb.Deployment{Name: d.Name, Revision: d.Revision, Phase: d.Phase, Health: d.Health, Image: d.Image, Digest: d.Digest,
		ContainerId: d.ContainerID, Code: d.Code, Message: d.Message, RestartCount: d.RestartCount,
		UpdatedAt: UnixNano(d.UpdatedAt), ReportedAt: UnixNano(d.ReportedAt)}
	for _, s := range d.Services {
		r.Services = append(r.Services, &recordpb.Service{Name: s.Name, Phase: s.Phase, Health: s.Health, Image: s.Image, Digest: s.Digest,
			ContainerId: s.ContainerID, RestartCount: s.RestartCount, ExitCode: s.ExitCode, OomKilled: s.OOMKilled, Code: s.Code, Message: s.Message})
	}
	return r
}

func gatewayOf(r *recordpb.Gateway) Gateway {
	g := Gateway{Tenant: r.Tenant, ID: r.Id, Online: r.Online, Session: r.Session, DeathSession: r.DeathSession,
		DeathReason: r.DeathReason, ConnectedAt: TimeOf(r.ConnectedAt), LastSeen: TimeOf(r.LastSeen), AgentVersion: r.AgentVersion,
		ProtocolVersion: r.ProtocolVersion, Simulated: r.Simulated, ReportedLabels: r.ReportedLabels, ReportedGroups: r.ReportedGroups,
		Capabilities: r.Capabilities, PublicKey: r.PublicKey, Delivered: r.Delivered, Running: r.Running}
	if h := r.Host; h != nil {
		g.Host = &Host{Hostname: h.Hostname, OS: h.Os, Arch: h.Arch, CPUs: h.Cpus, MemoryBytes: h.MemoryBytes}
	}
	if e := r.Engine; e != nil {
		g.Engine = &Engine{Name: e.Name, Version: e.Version, Reachable: e.Reachable, Error: e.Error}
	}
	if r.Deployments != nil {
		g.Deployments = make(map[string]*Deployment, len(r.Deployments))
		for k, d := range r.Deployments {
			g.Deployments[k] = deploymentOf(d)
		}
	}
	for _, x := range r.Registries {
		g.Registries = append(g.Registries, Registry{Registry: x.Registry, Kind: x.Kind, Username: x.Username,
			Fingerprint: x.Fingerprint, ExpiresAt: TimeOf(x.ExpiresAt), Warning: x.Warning})
	}
	for _, x := range r.Refused {
		g.Refused = append(g.Refused, Refusal{Limit: x.Limit, Message: x.Message, Count: x.Count, First: TimeOf(x.First), Last: TimeOf(x.Last)})
	}
	for _, x := range r.Sessions {
		g.Sessions = append(g.Sessions, Session{Session: x.Session, ConnectedAt: TimeOf(x.ConnectedAt),
			DisconnectedAt: TimeOf(x.DisconnectedAt), DeathReason: x.DeathReason})
	}
	return g
}

func deploymentOf(r *recordpb.Deployment) *Deployment {
	if r == nil {
		return nil
	}
	d := &Deployment{Name: r.Name, Revision: r.Revision, Phase: r.Phase, Health: r.Health, Image: r.Image, Digest: r.Digest,
		ContainerID: r.ContainerId, Code: r.Code, Message: r.Message, RestartCount: r.RestartCount,
		UpdatedAt: TimeOf(r.UpdatedAt), ReportedAt: TimeOf(r.ReportedAt)}
	for _, s := range r.Services {
		d.Services = append(d.Services, Service{Name: s.Name, Phase: s.Phase, Health: s.Health, Image: s.Image, Digest: s.Digest,
			ContainerID: s.ContainerId, RestartCount: s.RestartCount, ExitCode: s.ExitCode, OOMKilled: s.OomKilled, Code: s.Code, Message: s.Message})
	}
	return d
}

// UnixNano is t in Unix nanoseconds, 0 for the zero time: how stored
// records and the inventory keep times.
func UnixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// TimeOf is the time of Unix nanoseconds n, in UTC; 0 is the zero time.
func TimeOf(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
