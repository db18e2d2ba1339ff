package scenarios

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/regauth"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// BenchmarkAuthenticatedPull compares, in one run, a pull of a multi-layer
// image (the testapp layer and 4 × 8 MiB) from an authenticated registry
// through the agent's pull path (credential chosen by the keychain,
// engine.Docker.Pull with progress parsing) with a raw ImagePull of the
// same image through the Docker client library, which is what `docker
// pull` does. The image is removed before each iteration, outside the
// timing, so every pull downloads and extracts all layers.
func BenchmarkAuthenticatedPull(b *testing.B) {
	const user, password = "bench+robot", "bench-secret"
	reg := testimage.NewRegistry(b, testimage.WithAuth(registry.Basic{Users: map[string]string{user: password}}))
	img, _ := reg.Push(b, testimage.Spec{Repo: "team/big", Tag: "1", Padding: 32 << 20, PadLayers: 4})
	cli := testenv.DockerClient(b)
	ctx := context.Background()
	owner := "bench/pull"
	testenv.RemoveOwned(b, cli, owner, reg.Host+"/")

	kc := benchKeychain(b, basic(reg.Host, user, password))
	d, err := engine.NewDocker("", owner, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	// remove deletes the image with sub-benchmark b's timer stopped.
	remove := func(b *testing.B) {
		b.StopTimer()
		cli.ImageRemove(ctx, img, image.RemoveOptions{Force: true, PruneChildren: true})
		b.StartTimer()
	}
	b.Cleanup(func() {
		cli.ImageRemove(context.Background(), img, image.RemoveOptions{Force: true, PruneChildren: true})
	})

	b.Run("raw-docker", func(b *testing.B) {
		auth := credential.EncodeAuth(user, password, reg.Host)
		for b.Loop() {
			remove(b)
			rc, err := cli.ImagePull(ctx, img, image.PullOptions{RegistryAuth: auth})
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, rc)
			rc.Close()
		}
	})
	b.Run("agent", func(b *testing.B) {
		for b.Loop() {
			remove(b)
			auth, err := kc.Auth(ctx, img)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Pull(ctx, img, auth, func(int64, int64) {}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkECRTokenCalls counts the ECR GetAuthorizationToken calls the
// agent makes per 1,000 pulls within one token lifetime (the emulated ECR,
// reached through the SDK by AWS_ENDPOINT_URL_ECR).
func BenchmarkECRTokenCalls(b *testing.B) {
	e := &registry.ECR{Keys: map[string]string{"AKIDBENCH": "bench-secret"}, Region: "eu-west-1", TokenTTL: time.Hour}
	reg := testimage.NewRegistry(b, testimage.WithAuth(e))
	b.Setenv("AWS_ENDPOINT_URL_ECR", reg.APIEndpoint())
	b.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	kc := benchKeychain(b, ecrKeys(reg.Host, "AKIDBENCH", "bench-secret"))
	ctx := context.Background()
	image := reg.Host + "/team/app:1"
	for b.Loop() {
		if _, err := kc.Auth(ctx, image); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(e.TokenCalls())*1000/float64(b.N), "token-calls/1000-pulls")
}

// benchKeychain is the agent's keychain on a state store of its own,
// holding creds.
func benchKeychain(b *testing.B, creds ...*fleetv1.Credential) *regauth.Keychain {
	b.Helper()
	dir := b.TempDir()
	st, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	keys, err := credential.LoadKeys(filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key"))
	if err != nil {
		b.Fatal(err)
	}
	kc, err := regauth.NewKeychain(regauth.KeychainConfig{Store: st, Cipher: keys, CertsDir: filepath.Join(dir, "certs.d"), ECRToken: awsecr.Fetch})
	if err != nil {
		b.Fatal(err)
	}
	if err := kc.Set(context.Background(), creds); err != nil {
		b.Fatal(err)
	}
	return kc
}
