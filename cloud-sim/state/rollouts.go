package state

import (
	"encoding/json"
	"fmt"
	"time"
)

// Rollout is a rollout (bucket Rollouts, key Key("r", id)).
type Rollout struct {
	ID         string      `json:"id"`
	Spec       RolloutSpec `json:"spec"`
	State      string      `json:"state"`
	Phase      string      `json:"phase"`
	Reason     string      `json:"reason,omitempty"`
	CreatedAt  time.Time   `json:"createdAt"`
	FinishedAt time.Time   `json:"finishedAt,omitzero"`
	SoakUntil  time.Time   `json:"soakUntil,omitzero"`
	// PrefetchUntil ends the prefetch phase at the latest.
	PrefetchUntil time.Time `json:"prefetchUntil,omitzero"`
	Batch         int       `json:"batch"`
	BatchSize     int       `json:"batchSize"`
	Notified      int       `json:"notified"`
	Warnings      []string  `json:"warnings,omitempty"`
}

// RolloutGateway is one gateway's progress in a rollout (bucket Rollouts,
// key Key("g", rollout, gateway)).
type RolloutGateway struct {
	Rollout          string          `json:"rollout"`
	Gateway          string          `json:"gateway"`
	State            string          `json:"state"`
	Batch            int             `json:"batch"`
	Attempt          int             `json:"attempt"`
	CommandID        string          `json:"commandId,omitempty"`
	DispatchedAt     time.Time       `json:"dispatchedAt,omitzero"`
	FinishedAt       time.Time       `json:"finishedAt,omitzero"`
	Code             string          `json:"code,omitempty"`
	Message          string          `json:"message,omitempty"`
	PrevSpec         json.RawMessage `json:"prevSpec,omitempty"`
	RollbackRevision int64           `json:"rollbackRevision,omitempty"`
	// Prefetch is the gateway's prefetch, absent without a prefetch phase.
	Prefetch *GatewayPrefetch `json:"prefetch,omitempty"`
}

// GatewayPrefetch is one gateway's prefetch in a rollout's prefetch phase
// as stored.
type GatewayPrefetch struct {
	State        string    `json:"state"`
	CommandID    string    `json:"commandId,omitempty"`
	DispatchedAt time.Time `json:"dispatchedAt,omitzero"`
	FinishedAt   time.Time `json:"finishedAt,omitzero"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
}

// RolloutSpec is a rollout's spec as stored.
type RolloutSpec struct {
	Name              string          `json:"name,omitempty"`
	Tenant            string          `json:"tenant"`
	Targets           RolloutTargets  `json:"targets"`
	Deployment        json.RawMessage `json:"deployment"`
	SkipRegistryCheck bool            `json:"skipRegistryCheck,omitempty"`
	Strategy          Strategy        `json:"strategy"`
	Abort             AbortCriteria   `json:"abort"`
}

// RolloutTargets are a rollout's targets as stored.
type RolloutTargets struct {
	Gateways   []string `json:"gateways,omitempty"`
	Selector   string   `json:"selector,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	All        bool     `json:"all,omitempty"`
	IncludeNew bool     `json:"includeNew,omitempty"`
}

// Strategy is a rollout's strategy as stored.
type Strategy struct {
	Canary         *Canary      `json:"canary,omitempty"`
	BatchSize      int          `json:"batchSize,omitempty"`
	BatchPercent   float64      `json:"batchPercent,omitempty"`
	MaxInFlight    int          `json:"maxInFlight,omitempty"`
	RatePerMinute  float64      `json:"ratePerMinute,omitempty"`
	Exponential    *Exponential `json:"exponential,omitempty"`
	GatewayTimeout Duration     `json:"gatewayTimeout,omitempty"`
	Deadline       Duration     `json:"deadline,omitempty"`
	Prefetch       *Prefetch    `json:"prefetch,omitempty"`
}

// Prefetch is a rollout's prefetch phase as stored.
type Prefetch struct {
	MinPercent float64  `json:"minPercent,omitempty"`
	Timeout    Duration `json:"timeout,omitempty"`
}

// Canary is a rollout's first phase as stored.
type Canary struct {
	Count int      `json:"count"`
	Soak  Duration `json:"soak,omitempty"`
}

// Exponential is an accelerating rate as stored.
type Exponential struct {
	BaseRate        float64 `json:"baseRate"`
	IncrementFactor float64 `json:"incrementFactor"`
	StepEvery       int     `json:"stepEvery"`
	StepOn          string  `json:"stepOn,omitempty"`
}

// AbortCriteria are a rollout's abort criteria as stored.
type AbortCriteria struct {
	FailureKinds     []string `json:"failureKinds,omitempty"`
	ThresholdPercent float64  `json:"thresholdPercent,omitempty"`
	MinExecuted      int      `json:"minExecuted,omitempty"`
	Rollback         bool     `json:"rollback,omitempty"`
}

// Duration is a time.Duration stored as "90s" or "5m".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"90s\" or \"5m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 90s or 5m", s)
	}
	*d = Duration(v)
	return nil
}
