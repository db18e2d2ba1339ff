package errdefs_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestCode(t *testing.T) {
	tests := []struct {
		err  error
		want fleetv1.Reply_Code
	}{
		{nil, fleetv1.Reply_OK},
		{errors.New("boom"), fleetv1.Reply_INTERNAL},
		{fmt.Errorf("pull: %w", errdefs.ErrUnauthenticated), fleetv1.Reply_UNAUTHENTICATED},
		{errdefs.Invalid("deploy.spec.name", "must be set"), fleetv1.Reply_INVALID_ARGUMENT},
		{&errdefs.FieldError{Field: "x", Msg: "m", Kind: errdefs.ErrPolicyDenied}, fleetv1.Reply_POLICY_DENIED},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), fleetv1.Reply_DEADLINE_EXCEEDED},
	}
	for _, tt := range tests {
		if got := errdefs.Code(tt.err); got != tt.want {
			t.Errorf("Code(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	err := fmt.Errorf("validate: %w", errdefs.Invalid("deploy.spec.image", "must be set"))
	if got := errdefs.Field(err); got != "deploy.spec.image" {
		t.Errorf("Field = %q, want deploy.spec.image", got)
	}
}

func TestKind(t *testing.T) {
	for code := range fleetv1.Reply_Code_name {
		c := fleetv1.Reply_Code(code)
		kind := errdefs.Kind(c)
		switch {
		case c == fleetv1.Reply_OK || c == fleetv1.Reply_INTERNAL:
			if kind != nil {
				t.Errorf("Kind(%v) = %v, want nil", c, kind)
			}
		case kind != nil && errdefs.Code(fmt.Errorf("x: %w", kind)) != c:
			t.Errorf("Code(Kind(%v)) = %v, want %v", c, errdefs.Code(kind), c)
		}
	}
	if got := errdefs.Kind(fleetv1.Reply_PERMISSION_DENIED); got != errdefs.ErrPermissionDenied {
		t.Errorf("Kind(PERMISSION_DENIED) = %v, want ErrPermissionDenied", got)
	}
}
