// Package errdefs holds the error kinds that map one to one onto the
// protocol's reply codes. Code wraps one with %w (or builds a FieldError),
// and the reply to a command carries the matching code.
package errdefs

import (
	"context"
	"errors"
	"fmt"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

var (
	ErrInvalidArgument     = errors.New("invalid argument")
	ErrExpired             = errors.New("expired")
	ErrUnsupported         = errors.New("unsupported")
	ErrStaleRevision       = errors.New("stale revision")
	ErrUnauthenticated     = errors.New("unauthenticated")
	ErrPermissionDenied    = errors.New("permission denied")
	ErrNotFound            = errors.New("not found")
	ErrRegistryUnreachable = errors.New("registry unreachable")
	ErrRuntimeUnavailable  = errors.New("container runtime unavailable")
	ErrPolicyDenied        = errors.New("denied by local policy")
	ErrNoSpace             = errors.New("no space left")
	ErrTLS                 = errors.New("TLS failure")
	ErrUnhealthy           = errors.New("unhealthy")
	ErrSuperseded          = errors.New("superseded")
	ErrPayloadTooLarge     = errors.New("payload too large")
	ErrUntrustedImage      = errors.New("untrusted image")
)

var codes = []struct {
	err  error
	code fleetv1.Reply_Code
}{
	{ErrInvalidArgument, fleetv1.Reply_INVALID_ARGUMENT},
	{ErrExpired, fleetv1.Reply_EXPIRED},
	{ErrUnsupported, fleetv1.Reply_UNSUPPORTED},
	{ErrStaleRevision, fleetv1.Reply_STALE_REVISION},
	{ErrUnauthenticated, fleetv1.Reply_UNAUTHENTICATED},
	{ErrPermissionDenied, fleetv1.Reply_PERMISSION_DENIED},
	{ErrNotFound, fleetv1.Reply_NOT_FOUND},
	{ErrRegistryUnreachable, fleetv1.Reply_REGISTRY_UNREACHABLE},
	{ErrRuntimeUnavailable, fleetv1.Reply_RUNTIME_UNAVAILABLE},
	{ErrPolicyDenied, fleetv1.Reply_POLICY_DENIED},
	{ErrNoSpace, fleetv1.Reply_NO_SPACE},
	{ErrTLS, fleetv1.Reply_TLS_FAILURE},
	{ErrUnhealthy, fleetv1.Reply_UNHEALTHY},
	{ErrSuperseded, fleetv1.Reply_SUPERSEDED},
	{ErrPayloadTooLarge, fleetv1.Reply_PAYLOAD_TOO_LARGE},
	{ErrUntrustedImage, fleetv1.Reply_UNTRUSTED_IMAGE},
	{context.DeadlineExceeded, fleetv1.Reply_DEADLINE_EXCEEDED},
}

// Code maps err onto a reply code: OK for nil, INTERNAL for anything that
// wraps none of the kinds above.
func Code(err error) fleetv1.Reply_Code {
	if err == nil {
		return fleetv1.Reply_OK
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return fleetv1.Reply_INTERNAL
}

// Kind is the error kind of code, the inverse of Code: nil for OK and for
// codes without a kind (INTERNAL).
func Kind(code fleetv1.Reply_Code) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}

// FieldError is bad input in one field of a command. Its message names the
// field and says how to fix it.
type FieldError struct {
	Field string // path in the command, e.g. "deploy.spec.name"
	Msg   string // what is wrong and the fix
	Kind  error  // ErrInvalidArgument unless set
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func (e *FieldError) Unwrap() error {
	if e.Kind == nil {
		return ErrInvalidArgument
	}
	return e.Kind
}

// Invalid returns a FieldError of kind ErrInvalidArgument.
func Invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Field returns the field named by the FieldError in err's chain, or "".
func Field(err error) string {
	if fe, ok := errors.AsType[*FieldError](err); ok {
		return fe.Field
	}
	return ""
}

// PlainHTTPRegistry is the TLS failure of a registry that serves plain HTTP
// to an engine that requires TLS for it. Only the engine's
// insecure-registries setting allows that, and the agent does not change it.
func PlainHTTPRegistry(host string) error {
	return fmt.Errorf("%w: registry %s serves plain HTTP; the Docker Engine pulls over plain HTTP only from registries in its insecure-registries setting (daemon.json), which the agent does not change: serve the registry over TLS (with caCertificate for a private CA), or add %s to insecure-registries and restart the engine",
		ErrTLS, host, host)
}
