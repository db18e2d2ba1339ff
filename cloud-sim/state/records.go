package state

import (
	"encoding/json"
	"time"
)

// The records the controller stores, as they are stored: each part maps
// its domain records to these and back in one place, so that renaming a
// field of a domain record or of the API does not change stored data.

// Gateway is a gateway's inventory record (bucket Gateways).
type Gateway struct {
	Tenant       string    `json:"tenant"`
	ID           string    `json:"id"`
	Online       bool      `json:"online"`
	Session      uint64    `json:"session"`
	DeathSession uint64    `json:"deathSession,omitempty"`
	DeathReason  string    `json:"deathReason,omitempty"`
	ConnectedAt  time.Time `json:"connectedAt,omitzero"`
	LastSeen     time.Time `json:"lastSeen,omitzero"`

	AgentVersion    string  `json:"agentVersion,omitempty"`
	ProtocolVersion uint32  `json:"protocolVersion,omitempty"`
	Simulated       bool    `json:"simulated,omitempty"`
	Host            *Host   `json:"host,omitempty"`
	Engine          *Engine `json:"engine,omitempty"`
	// ReportedLabels and ReportedGroups are what the gateway's birth
	// says of itself: shown, never used to choose targets (the cloud's
	// own are in Device).
	ReportedLabels map[string]string      `json:"reportedLabels,omitempty"`
	ReportedGroups []string               `json:"reportedGroups,omitempty"`
	Capabilities   []string               `json:"capabilities,omitempty"`
	PublicKey      string                 `json:"publicKey,omitempty"`
	Deployments    map[string]*Deployment `json:"deployments,omitempty"`
	Registries     []Registry             `json:"registries,omitempty"`
	// Delivered lists the registries whose credential the cloud delivered.
	Delivered []string  `json:"delivered,omitempty"`
	Running   uint32    `json:"running"`
	Refused   []Refusal `json:"refused,omitempty"`
	// Sessions are the gateway's latest sessions, oldest first.
	Sessions []Session `json:"sessions,omitempty"`
}

// Session is one of a gateway's MQTT sessions.
type Session struct {
	Session        uint64    `json:"session"`
	ConnectedAt    time.Time `json:"connectedAt,omitzero"`
	DisconnectedAt time.Time `json:"disconnectedAt,omitzero"`
	DeathReason    string    `json:"deathReason,omitempty"`
}

// Refusal is what the inventory refused of a gateway for one limit.
type Refusal struct {
	Limit   string    `json:"limit"`
	Message string    `json:"message"`
	Count   uint64    `json:"count"`
	First   time.Time `json:"first"`
	Last    time.Time `json:"last"`
}

// Host is a gateway's machine.
type Host struct {
	Hostname    string `json:"hostname,omitempty"`
	OS          string `json:"os,omitempty"`
	Arch        string `json:"arch,omitempty"`
	CPUs        uint32 `json:"cpus,omitempty"`
	MemoryBytes uint64 `json:"memoryBytes,omitempty"`
}

// Engine is a gateway's container engine.
type Engine struct {
	Name      string `json:"name,omitempty"`
	Version   string `json:"version,omitempty"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// Deployment is a deployment's last status on a gateway: Phase by the
// protocol enum's name, Health in lower case ("" without a check).
type Deployment struct {
	Name         string    `json:"name"`
	Revision     int64     `json:"revision"`
	Phase        string    `json:"phase"`
	Health       string    `json:"health,omitempty"`
	Image        string    `json:"image,omitempty"`
	Digest       string    `json:"digest,omitempty"`
	ContainerID  string    `json:"containerId,omitempty"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
	RestartCount uint32    `json:"restartCount,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt,omitzero"`
	ReportedAt   time.Time `json:"reportedAt,omitzero"`
	// Services are the services its status reported (an application's).
	Services []Service `json:"services,omitempty"`
}

// Service is one service of a deployment, as its status reported it.
type Service struct {
	Name         string `json:"name"`
	Phase        string `json:"phase"`
	Health       string `json:"health,omitempty"`
	Image        string `json:"image,omitempty"`
	Digest       string `json:"digest,omitempty"`
	ContainerID  string `json:"containerId,omitempty"`
	RestartCount uint32 `json:"restartCount,omitempty"`
	ExitCode     int32  `json:"exitCode,omitempty"`
	OOMKilled    bool   `json:"oomKilled,omitempty"`
	Code         string `json:"code,omitempty"`
	Message      string `json:"message,omitempty"`
}

// Registry describes a credential a gateway holds (never the secret).
type Registry struct {
	Registry    string    `json:"registry"`
	Kind        string    `json:"kind"`
	Username    string    `json:"username,omitempty"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	ExpiresAt   time.Time `json:"expiresAt,omitzero"`
	Warning     string    `json:"warning,omitempty"`
}

// Command is one command and its outcome (bucket Commands, key
// Key("cmd", id)), with its payload encrypted so that it can be sent again.
type Command struct {
	ID              string          `json:"id"`
	Batch           string          `json:"batch"`
	Tenant          string          `json:"tenant"`
	Gateway         string          `json:"gateway"`
	Verb            string          `json:"verb"`
	State           string          `json:"state"`
	OfflineWhenSent bool            `json:"offlineWhenSent,omitempty"`
	Code            string          `json:"code,omitempty"`
	Message         string          `json:"message,omitempty"`
	Field           string          `json:"field,omitempty"`
	Reply           json.RawMessage `json:"reply,omitempty"`
	SentAt          time.Time       `json:"sentAt"`
	AcceptedAt      time.Time       `json:"acceptedAt,omitzero"`
	FinishedAt      time.Time       `json:"finishedAt,omitzero"`
	Credentials     []Registry      `json:"credentials,omitempty"`
	Payload         []byte          `json:"payload,omitempty"`
}

// Batch is one request's commands (bucket Commands, key Key("batch", id)).
type Batch struct {
	ID        string    `json:"id"`
	Verb      string    `json:"verb"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"createdAt"`
	// Commands are the batch's command ids in the order they were sent,
	// for a batch of up to 10,000 commands. A larger one's record would
	// outgrow NATS's 1 MiB message (a deploy to 50,000 gateways was
	// refused whole): it lists none, Count says how many it has, and
	// each command record names its batch.
	Commands []string `json:"commands,omitempty"`
	Count    int      `json:"count,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Device is a gateway's MQTT identity (bucket Devices): the SHA-256 of its
// password, never the password, and the groups and labels the cloud
// assigned it, by which commands and credentials are targeted.
type Device struct {
	Tenant    string            `json:"tenant"`
	ID        string            `json:"id"`
	Groups    []string          `json:"groups,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Hash      string            `json:"hash"`
	CreatedAt time.Time         `json:"createdAt"`
}
