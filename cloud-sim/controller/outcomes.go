package controller

import (
	"strings"
	"sync"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// peerOutcomes are the final replies to rollout commands that another
// replica's worker sent: every replica receives every reply, but only the
// sender's dispatcher holds the command. The scheduling replica reads them
// through rolloutCommands, so that it learns a prefetch's outcome (which
// no status carries) or a deploy's refusal whoever sent it. Memory only:
// after a restart the sender's resend brings the replies back.
type peerOutcomes struct {
	mu sync.Mutex
	m  map[string]peerOutcome // by command id; guarded by mu
}

type peerOutcome struct {
	tenant, gateway string
	st              dispatch.State
	code, msg       string
}

// maxPeerOutcomes bounds the replies kept; beyond it, they start over.
const maxPeerOutcomes = 100_000

// note keeps the final reply of tenant/gw to a rollout command (ids
// "ro-…") this replica does not know. A gateway can answer only for
// itself, and cannot name another gateway's rollout command: the ids are
// hashes of the rollout's id, which gateways never see.
func (p *peerOutcomes) note(tenant, gw string, rep *fleetv1.Reply) {
	if !strings.HasPrefix(rep.GetCommandId(), "ro-") || rep.GetResult() == fleetv1.Reply_ACCEPTED {
		return
	}
	o := peerOutcome{tenant: tenant, gateway: gw, st: dispatch.State(rep.GetResult().String()), msg: rep.GetMessage()}
	if rep.GetResult() == fleetv1.Reply_RESULT_UNSPECIFIED {
		o.st = dispatch.Failed
	}
	if rep.GetCode() != fleetv1.Reply_OK {
		o.code = rep.GetCode().String()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil || len(p.m) >= maxPeerOutcomes {
		p.m = map[string]peerOutcome{}
	}
	p.m[rep.GetCommandId()] = o
}

func (p *peerOutcomes) get(id string) (peerOutcome, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.m[id]
	return o, ok
}

// rolloutCommands is what the scheduler reads of the commands rollouts
// sent: this replica's dispatcher, then the replies to other replicas'.
type rolloutCommands struct {
	disp  rollout.Commands
	peers *peerOutcomes
}

func (r rolloutCommands) Outcome(id string) (dispatch.State, string, string, bool) {
	if st, code, msg, ok := r.disp.Outcome(id); ok {
		return st, code, msg, ok
	}
	o, ok := r.peers.get(id)
	return o.st, o.code, o.msg, ok
}
