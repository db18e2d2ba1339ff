package scenarios

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func setCredentials(t *testing.T, publicKey string, sealed bool, creds ...*fleetv1.Credential) *fleetv1.Command {
	t.Helper()
	body := &fleetv1.SetCredentials{Credentials: creds}
	if sealed {
		raw, err := protojson.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		box, err := credential.Seal(publicKey, raw)
		if err != nil {
			t.Fatal(err)
		}
		body = &fleetv1.SetCredentials{Sealed: box}
	}
	return &fleetv1.Command{Id: fmt.Sprint("creds-", time.Now().UnixNano()), Body: &fleetv1.Command_SetCredentials{SetCredentials: body}}
}

func basic(registry, user, password string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: user, Password: password}}}
}

func TestBasicAuthRegistryWithSealedCredentials(t *testing.T) {
	const user, wrong, right = "robot$ci", "wrong-pass-4711-secret", "right-pass-0815-secret"
	e := newDeployEnv(t, "gw-cred", brokertest.Embedded)
	areg := testimage.NewRegistry(t, testimage.WithBasicAuth(user, right))
	testenv.RemoveOwned(t, e.cli, e.owner, areg.Host+"/")
	img, _ := areg.Push(t, testimage.Spec{Repo: "team/private", Tag: "1"})
	spec := func(rev int64) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "private", Revision: rev, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_ALWAYS}
	}
	key := e.birth.GetPublicKey()
	if key == "" {
		t.Fatal("birth has no publicKey")
	}

	if r := sendLong(t, e.rec, e.gw, deploy(spec(1))); r.GetCode() != fleetv1.Reply_UNAUTHENTICATED {
		t.Errorf("deploy without credentials = %v, want UNAUTHENTICATED", r)
	}
	if r := send(t, e.rec, e.gw, setCredentials(t, key, false, basic(areg.Host, user, right))); r.GetCode() != fleetv1.Reply_POLICY_DENIED {
		t.Errorf("plaintext credentials = %v, want POLICY_DENIED (sealed required by default)", r)
	}
	if r := send(t, e.rec, e.gw, setCredentials(t, key, true, basic(areg.Host+"/team/", user, wrong))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("sealed credentials = %v", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(2))); r.GetCode() != fleetv1.Reply_UNAUTHENTICATED {
		t.Errorf("deploy with a wrong password = %v, want UNAUTHENTICATED", r)
	}
	// Rotated over MQTT, no restart: the next pull uses the new password. A
	// credential for the whole host loses to the longer team/ prefix.
	if r := send(t, e.rec, e.gw, setCredentials(t, key, true, basic(areg.Host, user, wrong), basic(areg.Host+"/team/", user, right))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("rotated credentials = %v", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(3))); r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("deploy with the right credential = %v", r)
	}

	send(t, e.rec, e.gw, rebirth(fmt.Sprint("rb-", time.Now().UnixNano())))
	births := e.rec.All(mqttclienttest.Kind(topic.Birth, e.gw))
	regs := birthOf(births[len(births)-1]).GetRegistries()
	if len(regs) != 2 || regs[1].GetRegistry() != areg.Host+"/team" || regs[1].GetUsername() != user || len(regs[1].GetFingerprint()) != 12 {
		t.Errorf("birth registries = %v, want both scopes with username and fingerprint", regs)
	}

	del := &fleetv1.Command{Id: fmt.Sprint("del-", time.Now().UnixNano()), Body: &fleetv1.Command_DeleteCredentials{
		DeleteCredentials: &fleetv1.DeleteCredentials{Registries: []string{areg.Host + "/team/", areg.Host}}}}
	if r := send(t, e.rec, e.gw, del); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("delete credentials = %v", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(4))); r.GetCode() != fleetv1.Reply_UNAUTHENTICATED {
		t.Errorf("deploy after the credentials were deleted = %v, want UNAUTHENTICATED", r)
	}

	assertNoSecret(t, e, wrong, right)
}

// assertNoSecret looks for each secret in every MQTT message recorded, the
// agent's log and its state files.
func assertNoSecret(t *testing.T, e deployEnv, secrets ...string) {
	t.Helper()
	for _, secret := range secrets {
		for _, m := range e.rec.All(func(mqttclient.Received) bool { return true }) {
			if bytes.Contains(m.Payload, []byte(secret)) {
				t.Errorf("secret %.4s… in an MQTT message on %s", secret, m.Name)
			}
		}
		if strings.Contains(e.agent.Logs(), secret) {
			t.Errorf("secret %.4s… in the agent's log", secret)
		}
		files, _ := filepath.Glob(filepath.Join(e.agent.StateDir, "*"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("secret %.4s… in the state file %s", secret, filepath.Base(f))
			}
		}
	}
}
