// Package dispatch sends commands to gateways and records their outcomes:
// batches (one request to one or more gateways), command records with
// their encrypted payloads, reply matching, and, on start, the resending
// of unfinished commands so that an outcome lost in a crash comes back.
// It knows nothing of targets or credentials: the controller resolves a
// target and prepares each gateway's commands.
package dispatch

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// State is a command's state. PENDING: published, no reply yet (an offline
// gateway's command waits in its session at the broker); ACCEPTED: taken,
// a final reply follows; the final ones are the reply's result;
// UNDELIVERED: the controller could not publish it.
type State string

// The command states.
const (
	Pending     State = "PENDING"
	Accepted    State = "ACCEPTED"
	Succeeded   State = "SUCCEEDED"
	Failed      State = "FAILED"
	Rejected    State = "REJECTED"
	Undelivered State = "UNDELIVERED"
)

// Final reports whether s is a final outcome.
func (s State) Final() bool { return s != Pending && s != Accepted }

// Command is one command to one gateway and its outcome.
type Command struct {
	ID      string
	Batch   string
	Tenant  string
	Gateway string
	Verb    string
	State   State
	// OfflineWhenSent: the gateway was offline; the broker holds the
	// command in its session until it reconnects.
	OfflineWhenSent bool
	Code            string
	Message         string
	Field           string
	// Reply is the final reply (status, registry check) as protojson.
	Reply      json.RawMessage
	SentAt     time.Time
	AcceptedAt time.Time
	FinishedAt time.Time
	// Credentials a set-credentials carries (sealed), described.
	Credentials []inventory.Registry
}

// Final reports whether the command has its final outcome.
func (c *Command) Final() bool { return c.State.Final() }

// Failed reports whether the command ended other than SUCCEEDED.
func (c *Command) Failed() bool { return c.Final() && c.State != Succeeded }

// record is a Command as stored: with its payload, encrypted, so that an
// unfinished command can be sent again (same id: the agent answers a
// duplicate with its recorded reply) after a controller restart.
type record struct {
	Command
	Payload []byte
}

// Batch is one request that sent commands to one or more gateways.
type Batch struct {
	ID        string
	Verb      string
	Tenant    string
	CreatedAt time.Time
	Commands  []string
	Warnings  []string
}

// BatchView is a batch with its commands and counts per state.
type BatchView struct {
	Batch
	Commands []*Command
	Counts   map[State]int
	Done     bool
	Failed   int
}

// NewID returns a random id with prefix ("b-…", "c-…").
func NewID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// stored is rec as the store keeps it.
func (rec *record) stored() *state.Command {
	c := &rec.Command
	return &state.Command{ID: c.ID, Batch: c.Batch, Tenant: c.Tenant, Gateway: c.Gateway, Verb: c.Verb, State: string(c.State),
		OfflineWhenSent: c.OfflineWhenSent, Code: c.Code, Message: c.Message, Field: c.Field, Reply: c.Reply, SentAt: c.SentAt,
		AcceptedAt: c.AcceptedAt, FinishedAt: c.FinishedAt, Credentials: inventory.StoredRegistries(c.Credentials), Payload: rec.Payload}
}

// restoreCommand is the record s stores.
func restoreCommand(s *state.Command) *record {
	return &record{Command: Command{ID: s.ID, Batch: s.Batch, Tenant: s.Tenant, Gateway: s.Gateway, Verb: s.Verb, State: State(s.State),
		OfflineWhenSent: s.OfflineWhenSent, Code: s.Code, Message: s.Message, Field: s.Field, Reply: s.Reply, SentAt: s.SentAt,
		AcceptedAt: s.AcceptedAt, FinishedAt: s.FinishedAt, Credentials: inventory.RestoredRegistries(s.Credentials)}, Payload: s.Payload}
}
