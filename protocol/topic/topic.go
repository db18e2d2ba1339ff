// Package topic builds and parses the MQTT topics of protocol v1.
//
//	{prefix}/{tenant}/{gateway}/birth|death|reply|events|metrics
//	{prefix}/{tenant}/{gateway}/cmd/{verb}
//	{prefix}/{tenant}/{gateway}/status/{deployment}
//	{prefix}/{tenant}/{gateway}/logs/{request id}
//	{prefix}/{tenant}/group/{group}/cmd/{verb}
//
// The default prefix is "fleet/v1".
package topic

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// DefaultPrefix is the topic prefix used when none is configured.
const DefaultPrefix = "fleet/v1"

// ReservedGateway is the gateway-id slot that holds group command topics;
// no gateway may use it as its id.
const ReservedGateway = "group"

// Verb is the last level of a command topic.
type Verb string

const (
	Deploy            Verb = "deploy"
	Remove            Verb = "remove"
	Start             Verb = "start"
	Stop              Verb = "stop"
	Restart           Verb = "restart"
	SetCredentials    Verb = "set-credentials"
	DeleteCredentials Verb = "delete-credentials"
	CheckRegistry     Verb = "check-registry"
	Rebirth           Verb = "rebirth"
	Prefetch          Verb = "prefetch"
	Logs              Verb = "logs"
	CancelLogs        Verb = "cancel-logs"
)

// Verbs lists every verb of protocol v1.
var Verbs = []Verb{Deploy, Remove, Start, Stop, Restart, SetCredentials, DeleteCredentials, CheckRegistry, Rebirth, Prefetch, Logs, CancelLogs}

// Valid reports whether v is a verb of protocol v1.
func (v Verb) Valid() bool { return slices.Contains(Verbs, v) }

// Kind says what a topic carries.
type Kind string

const (
	Birth   Kind = "birth"
	Death   Kind = "death"
	Command Kind = "cmd"
	Reply   Kind = "reply"
	Status  Kind = "status"
	Events  Kind = "events"
	Metrics Kind = "metrics"
	// LogStream is .../{gateway}/logs/{request id}: the chunks of a logs command.
	LogStream Kind = "logs"
)

// within reports whether s is 1 to max bytes, each one ok allows. Every
// publication's topic is checked: a loop, not a regular expression.
func within(s string, max int, ok func(byte) bool) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := range len(s) {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// idByte reports whether c may be in an id: A-Z a-z 0-9 . _ -
func idByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

// deploymentByte reports whether c may be in a deployment name: a-z 0-9 -
func deploymentByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-'
}

// ErrInvalid is wrapped by every error of this package.
var ErrInvalid = errors.New("invalid topic")

// idError is a bad id; it matches ErrInvalid.
type idError string

func (e idError) Error() string        { return string(e) }
func (e idError) Is(target error) bool { return target == ErrInvalid }

// CheckID checks a tenant, gateway or group id: 1-64 of [A-Za-z0-9._-].
func CheckID(what, id string) error {
	if !within(id, 64, idByte) {
		return idError(fmt.Sprintf("%s %q must be 1-64 characters of A-Z a-z 0-9 . _ -", what, id))
	}
	return nil
}

// CheckGatewayID is CheckID that also refuses the reserved id "group".
func CheckGatewayID(id string) error {
	if err := CheckID("gateway id", id); err != nil {
		return err
	}
	if id == ReservedGateway {
		return idError(fmt.Sprintf("gateway id %q is reserved for group command topics; choose another id", id))
	}
	return nil
}

// CheckDeploymentName checks a deployment name: 1-63 of [a-z0-9-].
func CheckDeploymentName(name string) error {
	if !within(name, 63, deploymentByte) {
		return idError(fmt.Sprintf("deployment name %q must be 1-63 characters of a-z 0-9 -", name))
	}
	return nil
}

// Scheme builds topics under one prefix.
type Scheme struct {
	prefix string
}

// NewScheme returns the scheme for prefix; an empty prefix means DefaultPrefix.
// A prefix has no wildcards, no empty levels and no leading or trailing slash.
func NewScheme(prefix string) (Scheme, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.ContainsAny(prefix, "+#\x00") || strings.HasPrefix(prefix, "/") ||
		strings.HasSuffix(prefix, "/") || strings.Contains(prefix, "//") {
		return Scheme{}, fmt.Errorf("%w: prefix %q must not contain + # or empty levels, nor start or end with /", ErrInvalid, prefix)
	}
	return Scheme{prefix: prefix}, nil
}

// Default is the scheme with DefaultPrefix.
func Default() Scheme { return Scheme{prefix: DefaultPrefix} }

// Prefix returns the scheme's prefix.
func (s Scheme) Prefix() string { return s.pfx() }

func (s Scheme) pfx() string {
	if s.prefix == "" {
		return DefaultPrefix
	}
	return s.prefix
}

func (s Scheme) join(levels ...string) string {
	return s.pfx() + "/" + strings.Join(levels, "/")
}

func (s Scheme) Birth(tenant, gateway string) string  { return s.join(tenant, gateway, string(Birth)) }
func (s Scheme) Death(tenant, gateway string) string  { return s.join(tenant, gateway, string(Death)) }
func (s Scheme) Reply(tenant, gateway string) string  { return s.join(tenant, gateway, string(Reply)) }
func (s Scheme) Events(tenant, gateway string) string { return s.join(tenant, gateway, string(Events)) }
func (s Scheme) Metrics(tenant, gateway string) string {
	return s.join(tenant, gateway, string(Metrics))
}

func (s Scheme) Command(tenant, gateway string, v Verb) string {
	return s.join(tenant, gateway, string(Command), string(v))
}

func (s Scheme) GroupCommand(tenant, group string, v Verb) string {
	return s.join(tenant, ReservedGateway, group, string(Command), string(v))
}

func (s Scheme) Status(tenant, gateway, deployment string) string {
	return s.join(tenant, gateway, string(Status), deployment)
}

// LogStream is the topic of the chunks answering logs command requestID.
func (s Scheme) LogStream(tenant, gateway, requestID string) string {
	return s.join(tenant, gateway, string(LogStream), requestID)
}

// CommandFilter is the subscription for every command to one gateway.
func (s Scheme) CommandFilter(tenant, gateway string) string {
	return s.join(tenant, gateway, string(Command), "+")
}

// GroupCommandFilter is the subscription for every command to one group.
func (s Scheme) GroupCommandFilter(tenant, group string) string {
	return s.join(tenant, ReservedGateway, group, string(Command), "+")
}

// ConsoleReply is a response topic a console can set on commands to one
// gateway. It lies under the gateway's reply topic so that a broker ACL
// confining each gateway to its own topics still lets the reply through.
func (s Scheme) ConsoleReply(tenant, gateway, console string) string {
	return s.join(tenant, gateway, string(Reply), console)
}

// Filter is a subscription for kind across all tenants and gateways, e.g.
// "fleet/v1/+/+/birth". For Status it matches every deployment, for Reply
// also the console reply topics.
func (s Scheme) Filter(k Kind) string {
	switch k {
	case Status, Command, LogStream:
		return s.join("+", "+", string(k), "+")
	case Reply:
		return s.join("+", "+", string(k), "#")
	default:
		return s.join("+", "+", string(k))
	}
}

// Topic is a parsed topic.
type Topic struct {
	Tenant     string
	Gateway    string // empty for group commands
	Group      string // set for group commands only
	Kind       Kind
	Verb       Verb   // Command only
	Deployment string // Status only
	Request    string // LogStream only: the logs command's id
	Console    string // Reply on a console reply topic only
}

// Parse parses a topic of this scheme. Wildcards are refused: Parse is for
// topics of received messages, not filters.
func (s Scheme) Parse(name string) (Topic, error) {
	rest, ok := strings.CutPrefix(name, s.pfx()+"/")
	if !ok {
		return Topic{}, fmt.Errorf("%w: %q does not start with %q", ErrInvalid, name, s.pfx()+"/")
	}
	lv := strings.Split(rest, "/")
	if len(lv) < 3 {
		return Topic{}, fmt.Errorf("%w: %q has too few levels", ErrInvalid, name)
	}
	if err := CheckID("tenant", lv[0]); err != nil {
		return Topic{}, err
	}
	t := Topic{Tenant: lv[0]}
	if lv[1] == ReservedGateway {
		if len(lv) != 5 || lv[3] != string(Command) {
			return Topic{}, fmt.Errorf("%w: %q: group topics have the form {tenant}/group/{group}/cmd/{verb}", ErrInvalid, name)
		}
		if err := CheckID("group", lv[2]); err != nil {
			return Topic{}, err
		}
		t.Group, t.Kind, t.Verb = lv[2], Command, Verb(lv[4])
		if !t.Verb.Valid() {
			return Topic{}, fmt.Errorf("%w: %q: unknown verb %q", ErrInvalid, name, lv[4])
		}
		return t, nil
	}
	if err := CheckGatewayID(lv[1]); err != nil {
		return Topic{}, err
	}
	t.Gateway, t.Kind = lv[1], Kind(lv[2])
	switch t.Kind {
	case Birth, Death, Events, Metrics:
		if len(lv) != 3 {
			return Topic{}, fmt.Errorf("%w: %q: %s topics have no sub-levels", ErrInvalid, name, t.Kind)
		}
	case Reply:
		switch len(lv) {
		case 3:
		case 4:
			if err := CheckID("console", lv[3]); err != nil {
				return Topic{}, err
			}
			t.Console = lv[3]
		default:
			return Topic{}, fmt.Errorf("%w: %q: reply topics have at most one sub-level", ErrInvalid, name)
		}
	case Command:
		if len(lv) != 4 {
			return Topic{}, fmt.Errorf("%w: %q: command topics end in cmd/{verb}", ErrInvalid, name)
		}
		t.Verb = Verb(lv[3])
		if !t.Verb.Valid() {
			return Topic{}, fmt.Errorf("%w: %q: unknown verb %q", ErrInvalid, name, lv[3])
		}
	case Status:
		if len(lv) != 4 {
			return Topic{}, fmt.Errorf("%w: %q: status topics end in status/{deployment}", ErrInvalid, name)
		}
		if err := CheckDeploymentName(lv[3]); err != nil {
			return Topic{}, err
		}
		t.Deployment = lv[3]
	case LogStream:
		if len(lv) != 4 {
			return Topic{}, fmt.Errorf("%w: %q: logs topics end in logs/{request id}", ErrInvalid, name)
		}
		if err := CheckID("request id", lv[3]); err != nil {
			return Topic{}, err
		}
		t.Request = lv[3]
	default:
		return Topic{}, fmt.Errorf("%w: %q: unknown kind %q", ErrInvalid, name, lv[2])
	}
	return t, nil
}

// VerbOf is the verb a command's body belongs to; "" when it has none.
func VerbOf(c *fleetv1.Command) Verb {
	switch c.GetBody().(type) {
	case *fleetv1.Command_Deploy:
		return Deploy
	case *fleetv1.Command_Remove:
		return Remove
	case *fleetv1.Command_Start:
		return Start
	case *fleetv1.Command_Stop:
		return Stop
	case *fleetv1.Command_Restart:
		return Restart
	case *fleetv1.Command_SetCredentials:
		return SetCredentials
	case *fleetv1.Command_DeleteCredentials:
		return DeleteCredentials
	case *fleetv1.Command_CheckRegistry:
		return CheckRegistry
	case *fleetv1.Command_Rebirth:
		return Rebirth
	case *fleetv1.Command_Prefetch:
		return Prefetch
	case *fleetv1.Command_Logs:
		return Logs
	case *fleetv1.Command_CancelLogs:
		return CancelLogs
	}
	return ""
}

// BodyField is the JSON name of a verb's body field, e.g. "setCredentials".
func (v Verb) BodyField() string {
	var b strings.Builder
	up := false
	for _, r := range string(v) {
		if r == '-' {
			up = true
			continue
		}
		if up {
			r, up = unicode.ToUpper(r), false
		}
		b.WriteRune(r)
	}
	return b.String()
}
