package cli

import "github.com/fleet-agent/fleet/cloud-sim/controller"

// The API's response types the verbs decode, named here once: when they
// move to another package only this file changes.
type (
	gatewayView    = controller.Gateway
	target         = controller.Target
	batchView      = controller.BatchView
	command        = controller.Command
	rolloutSpec    = controller.RolloutSpec
	rolloutView    = controller.RolloutView
	rolloutGateway = controller.RolloutGateway
	credentialView = controller.CredentialView
	checkResult    = controller.CheckResult
)

// States of a command and of a rollout and its gateways, as the API
// reports them.
const (
	statePending   = controller.StatePending
	stateAccepted  = controller.StateAccepted
	rolloutFailed  = controller.RolloutFailed
	rolloutAborted = controller.RolloutAborted
	rolloutCancel  = controller.RolloutCanceled
	gwQueued       = controller.GwQueued
	gwInProgress   = controller.GwInProgress
	gwSucceeded    = controller.GwSucceeded
	gwFailed       = controller.GwFailed
	gwRejected     = controller.GwRejected
	gwTimedOut     = controller.GwTimedOut
)
