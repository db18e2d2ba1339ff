package compose

import (
	"context"
	"errors"
	"testing"

	"github.com/fleet-agent/fleet/protocol/topic"
)

// FuzzTranslate: any file either translates into a spec of valid names
// with one service or more, or is refused with an *Error; never a panic.
func FuzzTranslate(f *testing.F) {
	f.Add([]byte(shop))
	f.Add([]byte("services:\n  web: {image: web:1, build: .}\n"))
	f.Add([]byte("name: a\nservices:\n  w:\n    image: x\n    extends: w\n"))
	f.Add([]byte("x: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, file []byte) {
		res, err := Translate(context.Background(), file, Options{Name: "app", Revision: 1})
		if err != nil {
			if _, ok := errors.AsType[*Error](err); !ok {
				t.Fatalf("error %T %v, want an *Error", err, err)
			}
			return
		}
		if len(res.Spec.GetServices()) == 0 || topic.CheckDeploymentName(res.Spec.GetName()) != nil {
			t.Fatalf("spec %v", res.Spec)
		}
		for name, s := range res.Spec.GetServices() {
			if !serviceName.MatchString(name) || s.GetImage() == "" {
				t.Fatalf("service %q %v", name, s)
			}
		}
	})
}
