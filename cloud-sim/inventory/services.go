package inventory

import (
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Bounds on an application's services a gateway reports, so that its
// stored record stays under NATS's maximum message: the services of one
// deployment kept, those of all its deployments, and a service's message.
const (
	maxServices          = 32
	maxGatewayServices   = 256
	maxServiceMessage    = 256
	maxServiceIdentifier = 128
)

// Service is one service of a deployment as its status reports it
// (DeploymentStatus.services): a single container's one service, or each
// of an application's.
type Service struct {
	Name         string
	Phase        Phase
	Health       Health
	Image        string
	Digest       string
	ContainerID  string
	RestartCount uint32
	ExitCode     int32
	OOMKilled    bool
	Code         string
	Message      string
}

// servicesOf are the services a status reports, at most room of them.
func servicesOf(s *fleetv1.DeploymentStatus, room int) []Service {
	list := s.GetServices()
	if len(list) > min(room, maxServices) {
		list = list[:max(min(room, maxServices), 0)]
	}
	if len(list) == 0 {
		return nil
	}
	out := make([]Service, len(list))
	for i, ss := range list {
		out[i] = Service{Name: clip(ss.GetName(), maxServiceIdentifier), Phase: Phase(ss.GetPhase()), Health: Health(ss.GetHealth()),
			Image: clip(ss.GetImage(), maxText), Digest: clip(ss.GetImageDigest(), maxServiceIdentifier), ContainerID: clip(ss.GetContainerId(), maxServiceIdentifier),
			RestartCount: ss.GetRestartCount(), ExitCode: ss.GetExitCode(), OOMKilled: ss.GetOomKilled(), Message: clip(ss.GetMessage(), maxServiceMessage)}
		if ss.GetCode() != fleetv1.Reply_OK {
			out[i].Code = ss.GetCode().String()
		}
	}
	return out
}

// serviceRoom is how many services a status of deployment name may add:
// the gateway's bound less those of its other deployments.
func (g *Gateway) serviceRoom(name string) int {
	n := 0
	for k, d := range g.Deployments {
		if k != name {
			n += len(d.Services)
		}
	}
	return maxGatewayServices - n
}

func storedServices(list []Service) []state.Service {
	if list == nil {
		return nil
	}
	out := make([]state.Service, len(list))
	for i, s := range list {
		out[i] = state.Service{Name: s.Name, Phase: s.Phase.String(), Health: s.Health.String(), Image: s.Image, Digest: s.Digest,
			ContainerID: s.ContainerID, RestartCount: s.RestartCount, ExitCode: s.ExitCode, OOMKilled: s.OOMKilled, Code: s.Code, Message: s.Message}
	}
	return out
}

func restoredServices(list []state.Service) []Service {
	if list == nil {
		return nil
	}
	out := make([]Service, len(list))
	for i, s := range list {
		out[i] = Service{Name: s.Name, Phase: Phase(fleetv1.DeploymentStatus_Phase_value[s.Phase]),
			Health: Health(fleetv1.HealthCheck_Status_value[strings.ToUpper(s.Health)]), Image: s.Image, Digest: s.Digest,
			ContainerID: s.ContainerID, RestartCount: s.RestartCount, ExitCode: s.ExitCode, OOMKilled: s.OOMKilled, Code: s.Code, Message: s.Message}
	}
	return out
}
