package cli

import "github.com/fleet-agent/fleet/cloud-sim/api"

// The API's response types the verbs decode, named here once: when they
// move to another package only this file changes.
type (
	gatewayView    = api.Gateway
	target         = api.Target
	batchView      = api.BatchView
	command        = api.Command
	rolloutView    = api.RolloutView
	rolloutGateway = api.RolloutGateway
	credentialView = api.CredentialView
	checkResult    = api.CheckResult
)

// States of a command and of a rollout and its gateways, as the API
// reports them.
const (
	statePending   = api.StatePending
	stateAccepted  = api.StateAccepted
	rolloutFailed  = api.RolloutFailed
	rolloutAborted = api.RolloutAborted
	rolloutCancel  = api.RolloutCanceled
	gwQueued       = api.GwQueued
	gwInProgress   = api.GwInProgress
	gwSucceeded    = api.GwSucceeded
	gwFailed       = api.GwFailed
	gwRejected     = api.GwRejected
	gwTimedOut     = api.GwTimedOut

	phasePrefetch      = api.PhasePrefetch
	prefetchQueued     = api.PrefetchQueued
	prefetchInProgress = api.PrefetchInProgress
)
