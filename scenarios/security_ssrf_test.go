package scenarios

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// newCloudCheckAllowing starts serve (no simulated fleet) whose registry
// check may reach the allow-listed destinations besides public ones.
func newCloudCheckAllowing(t *testing.T, allow ...string) *cloud {
	t.Helper()
	c := &cloud{dataDir: t.TempDir(), mqtt: testenv.FreeAddr(t)}
	c.cfg = serve.Config{DataDir: c.dataDir, MQTTListen: c.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), StaleAfter: time.Minute, RegistryCheckAllow: allow}
	c.start(t)
	t.Cleanup(func() {
		if c.Server != nil {
			c.Close()
		}
	})
	return c
}

// hitCounter is an HTTP service that counts the requests it gets.
type hitCounter struct {
	*httptest.Server
	hits atomic.Int32
	host string
}

func newHitCounter(t *testing.T, h http.HandlerFunc) *hitCounter {
	s := &hitCounter{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.hits.Add(1); h(w, r) }))
	t.Cleanup(s.Close)
	s.host = strings.TrimPrefix(s.URL, "http://")
	return s
}

// TestSecuritySSRFRegistryCheck performs issue 12 item 5 through the API:
// an operator of a tenant names a loopback service, or a registry that
// redirects to loopback or to the cloud's metadata service, as the image's
// registry, in check-registry and in set-credentials --check-image. The
// cloud refuses to connect (the loopback service never sees a request) and
// never echoes a server's answer; the allow-listed test registry still
// passes. Before the egress policy the loopback service's
// "password=hunter2" came back in the API response.
func TestSecuritySSRFRegistryCheck(t *testing.T) {
	const secret = "password=hunter2"
	leak := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "admin console "+secret, http.StatusUnauthorized)
	}
	internal := newHitCounter(t, leak)
	registryThen := func(then http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v2/" {
				then(w, r)
			}
		}
	}
	toLoopback := newHitCounter(t, registryThen(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.URL+"/admin", http.StatusTemporaryRedirect)
	}))
	toMetadata := newHitCounter(t, registryThen(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/iam/security-credentials/", http.StatusFound)
	}))
	leaky := newHitCounter(t, registryThen(leak))
	reg := testimage.NewRegistry(t, testimage.WithBasicAuth("robot", "robot-pass-0001"))
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	c := newCloudCheckAllowing(t, reg.Host, toLoopback.host, toMetadata.host, leaky.host)

	tests := []struct {
		name, image, says string
	}{
		{"loopback service", internal.host + "/team/app:1", "--registry-check-allow"},
		{"localhost by name", "localhost:" + internal.host[strings.LastIndex(internal.host, ":")+1:] + "/team/app:1", "loopback address"},
		{"redirect to loopback", toLoopback.host + "/team/app:1", "loopback address"},
		{"redirect to the metadata service", toMetadata.host + "/team/app:1", "169.254.169.254"},
		{"allow-listed service answering with a password", leaky.host + "/team/app:1", "HTTP 401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var res api.CheckResult
			var raw []byte
			if err := c.api.Do(context.Background(), "POST", "/v1/tenants/acme/check-registry", map[string]string{"image": tt.image}, &res, &raw); err != nil {
				t.Fatal(err)
			}
			if res.OK || !strings.Contains(res.Message, tt.says) {
				t.Errorf("check-registry = ok %v %s %q, want refused saying %q", res.OK, res.Code, res.Message, tt.says)
			}
			if strings.Contains(string(raw), "hunter2") {
				t.Errorf("check-registry echoed the server's answer: %s", raw)
			}
			// The same through set-credentials --check-image: refused,
			// nothing stored, nothing echoed.
			cred, _ := protojson.Marshal(basic(tt.image[:strings.Index(tt.image, "/")], "robot", "robot-pass-0001"))
			err := c.api.Do(context.Background(), "PUT", "/v1/tenants/acme/credentials", api.CredentialRequest{Credential: cred, CheckImage: tt.image}, nil, nil)
			var apiErr *apiclient.APIError
			if !errors.As(err, &apiErr) || apiErr.Status < 400 || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("set-credentials --check-image = %v, want a refusal without the server's answer", err)
			}
		})
	}
	if n := internal.hits.Load(); n != 0 {
		t.Errorf("the loopback service got %d requests from the cloud", n)
	}

	t.Run("allow-listed registry", func(t *testing.T) {
		cred, _ := protojson.Marshal(basic(reg.Host, "robot", "robot-pass-0001"))
		var view api.CredentialView
		if err := c.api.Do(context.Background(), "PUT", "/v1/tenants/acme/credentials", api.CredentialRequest{Credential: cred, CheckImage: img}, &view, nil); err != nil {
			t.Fatalf("set-credentials --check-image on the allow-listed registry: %v", err)
		}
		var res api.CheckResult
		if err := c.api.Do(context.Background(), "POST", "/v1/tenants/acme/check-registry", map[string]string{"image": img}, &res, nil); err != nil || !res.OK {
			t.Errorf("check-registry = %+v, %v; want ok", res, err)
		}
	})
}
