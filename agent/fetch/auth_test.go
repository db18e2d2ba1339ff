package fetch

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// keychain is the agent's keychain as Fetch sees it: credentials per
// registry.
type keychain map[string]authn.Authenticator

func (k keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if a, ok := k[r.RegistryStr()]; ok {
		return a, nil
	}
	return authn.Anonymous, nil
}

// guarded answers 401 unless the request carries the credentials: Basic
// user:pass, or the Bearer token its /token realm gives for them.
type guarded struct {
	h      http.Handler
	bearer bool
	on     atomic.Bool  // off while the test pushes
	blobs  atomic.Int64 // authorised blob GETs
}

func (g *guarded) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.on.Load() {
		g.h.ServeHTTP(w, r)
		return
	}
	user, pass, basicOK := r.BasicAuth()
	basicOK = basicOK && user == "fleet" && pass == "s3cret"
	if r.URL.Path == "/token" {
		if !basicOK {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"token":"tok-1"}`)
		return
	}
	ok := basicOK
	challenge := `Basic realm="test"`
	if g.bearer {
		ok = r.Header.Get("Authorization") == "Bearer tok-1"
		challenge = fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host)
	}
	if !ok {
		w.Header().Set("WWW-Authenticate", challenge)
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}`)
		return
	}
	if strings.Contains(r.URL.Path, "/blobs/") {
		g.blobs.Add(1)
	}
	g.h.ServeHTTP(w, r)
}

func TestFetchWithCredentials(t *testing.T) {
	img := testImage(t, 10, 2, 64<<10)
	tests := []struct {
		name    string
		bearer  bool
		pass    string
		wantErr bool
	}{
		{name: "basic", pass: "s3cret"},
		{name: "bearer realm", bearer: true, pass: "s3cret"},
		{name: "basic, wrong password", pass: "guess", wantErr: true},
		{name: "bearer realm, wrong password", bearer: true, pass: "guess", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &guarded{bearer: tt.bearer}
			host := startRegistry(t, img, func(h http.Handler) http.Handler { g.h = h; return g })
			g.on.Store(true)
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			cfg.Keychain = keychain{host: &authn.Basic{Username: "fleet", Password: tt.pass}}
			f, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			digest, err := f.Fetch(ctx, host+"/test/img:v1", v1.Platform{})
			if tt.wantErr {
				if err == nil || ctx.Err() != nil {
					t.Fatalf("Fetch = %v (ctx %v), want a refusal before the deadline", err, ctx.Err())
				}
				t.Logf("Fetch: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			checkStore(t, dir, digest, img)
			if n := g.blobs.Load(); n < 3 {
				t.Errorf("%d authorised blob GETs, want config and 2 layers", n)
			}
		})
	}
}
