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
	ID      string `json:"id"`
	Batch   string `json:"batch"`
	Tenant  string `json:"tenant"`
	Gateway string `json:"gateway"`
	Verb    string `json:"verb"`
	State   State  `json:"state"`
	// OfflineWhenSent: the gateway was offline; the broker holds the
	// command in its session until it reconnects.
	OfflineWhenSent bool   `json:"offlineWhenSent,omitempty"`
	Code            string `json:"code,omitempty"`
	Message         string `json:"message,omitempty"`
	Field           string `json:"field,omitempty"`
	// Reply is the final reply (status, registry check) as protojson.
	Reply      json.RawMessage `json:"reply,omitempty"`
	SentAt     time.Time       `json:"sentAt"`
	AcceptedAt time.Time       `json:"acceptedAt,omitzero"`
	FinishedAt time.Time       `json:"finishedAt,omitzero"`
	// Credentials a set-credentials carries (sealed), described.
	Credentials []inventory.Registry `json:"credentials,omitempty"`
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
	Payload []byte `json:"payload,omitempty"`
}

// Batch is one request that sent commands to one or more gateways.
type Batch struct {
	ID        string    `json:"id"`
	Verb      string    `json:"verb"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"createdAt"`
	Commands  []string  `json:"commands"`
	Warnings  []string  `json:"warnings,omitempty"`
}

// BatchView is a batch with its commands and counts per state.
type BatchView struct {
	Batch
	Commands []*Command    `json:"commands"`
	Counts   map[State]int `json:"counts"`
	Done     bool          `json:"done"`
	Failed   int           `json:"failed"`
}

// NewID returns a random id with prefix ("b-…", "c-…").
func NewID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}
