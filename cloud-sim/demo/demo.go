// Package demo runs what `make demo` shows a newcomer: cloud-sim serve
// with its embedded broker, NATS and a private registry holding a sample
// web image; one real fleet-agent on the local Docker Engine and a few
// dozen simulated gateways; sealed registry credentials; a deploy to every
// gateway with progress; the inventory; an HTTP request to the real
// container; and a clean-up. Without Docker it runs the simulated part.
package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/gateway"
	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/cli"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Options adjusts the demo.
type Options struct {
	SimCount int
	// Serve keeps the fleet, the deployment and the web console running
	// after the demo until ctx ends (Ctrl-C), for an operator to look
	// around; the console is on 127.0.0.1:8080 when that port is free.
	Serve bool
}

const (
	tenant     = "demo"
	realID     = "gateway-1"
	regUser    = "demo"
	deployment = "web"
)

// Run runs the demo, printing to out. It returns an error if any step fails.
func Run(ctx context.Context, out io.Writer, log *slog.Logger, opts Options) error {
	steps, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	d := &run{out: out, log: log, opts: opts, runID: randomHex(4), regPass: randomHex(12)}
	defer d.close()
	if err := d.start(steps); err != nil {
		return err
	}
	if err := d.deploy(steps); err != nil {
		return err
	}
	if opts.Serve {
		d.step("demo finished; the fleet keeps running. The web console: %s/ (log in with the API token: cat %s)", d.serve.APIURL, filepath.Join(d.dataDir, api.TokenFile))
		fmt.Fprintf(d.out, "Ctrl-C stops everything and removes the demo's containers.\n")
		<-ctx.Done()
		return nil
	}
	ctx = steps
	d.step("cleaning up: removing the deployment everywhere")
	if code := d.cli(ctx, "", "remove", "--tenant", tenant, "--all", deployment, "--remove-image", "--wait", "2m"); code != 0 {
		return fmt.Errorf("remove failed on some gateway (exit %d)", code)
	}
	d.step("demo finished")
	return nil
}

// run is one run of the demo: what it started, and how to stop it.
type run struct {
	out     io.Writer
	log     *slog.Logger
	opts    Options
	runID   string
	regPass string

	docker  *dockerclient.Client // nil without an engine
	dataDir string
	serve   *serve.Server
	reg     *serve.RunningRegistry
	image   string
	closers []func() // in reverse order by close
}

func (d *run) step(format string, args ...any) { fmt.Fprintf(d.out, "\n==> "+format+"\n", args...) }

func (d *run) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

// cli runs a client verb against the demo's API, as an operator would.
func (d *run) cli(ctx context.Context, stdin string, args ...string) int {
	env := cli.Env{Stdout: d.out, Stderr: d.out, Getenv: func(string) string { return "" }, Stdin: strings.NewReader(stdin)}
	fmt.Fprintf(d.out, "$ cloud-sim %s\n", strings.Join(args, " "))
	return cli.Run(ctx, env, append(args, "--api", d.serve.APIURL, "--data", d.dataDir))
}

// start starts serve, the private registry with the sample image, the real
// agent (when there is an engine) and the simulated gateways, and waits
// until every gateway is online.
func (d *run) start(ctx context.Context) error {
	docker, dockerErr := dockerAvailable(ctx)
	if dockerErr != nil {
		d.step("Docker Engine not available (%v): running the simulated part only", dockerErr)
	} else {
		d.docker = docker
		d.closers = append(d.closers, func() { docker.Close() })
	}
	var err error
	if d.dataDir, err = os.MkdirTemp("", "cloud-sim-demo-"); err != nil {
		return err
	}
	d.closers = append(d.closers, func() { os.RemoveAll(d.dataDir) })
	regs, err := serve.StartRegistries(ctx, []serve.RegistrySpec{{
		Name: "private", Auth: "basic", Users: map[string]string{regUser: d.regPass},
		Images: []serve.ImageSpec{{Repo: "demo/web", Tag: "1.0", Sample: "web", Message: "hello from the fleet (" + d.runID + ")"}},
	}}, d.log)
	for _, r := range regs {
		d.closers = append(d.closers, func() { r.Server.Close() })
	}
	if err != nil {
		return fmt.Errorf("sample image: %w", err)
	}
	d.reg = regs["private"]
	d.image = d.reg.Images[0]
	d.step("private registry at %s (Basic auth) holds the sample web image %s", d.reg.Server.URL, d.image)

	d.serve, err = serve.Start(ctx, serve.Config{
		DataDir: d.dataDir, MQTTListen: "127.0.0.1:0", NATSListen: "127.0.0.1:0", HTTPListen: d.httpListen(),
		Scheme: topic.Default(), Logger: d.log, RegistryCheckAllow: []string{d.reg.Server.Host},
		Sim: simfleet.Config{Count: d.opts.SimCount, Tenant: tenant, Prefix: "sim-", PullTime: 300 * time.Millisecond},
	})
	if err != nil {
		return err
	}
	d.closers = append(d.closers, func() { d.serve.Close() })
	d.step("cloud-sim serving: MQTT %s (per-gateway passwords and ACL), NATS JetStream %s, HTTP API %s", d.serve.BrokerURL, d.serve.Store.URL(), d.serve.APIURL)

	want := d.opts.SimCount
	if d.docker != nil {
		stop, err := startAgent(ctx, d.serve, d.docker, d.dataDir, d.runID, d.log)
		if err != nil {
			return err
		}
		d.closers = append(d.closers, stop, func() { removeDemoContainers(d.docker, d.runID) })
		want++
		d.step("fleet-agent %s/%s started on the local Docker Engine, and %d simulated gateways", tenant, realID, d.opts.SimCount)
	} else {
		d.step("%d simulated gateways started", d.opts.SimCount)
	}
	if err := waitOnline(ctx, d.serve.Controller, want); err != nil {
		return err
	}
	if d.cli(ctx, "", "gateways", "--tenant", tenant) != 0 {
		return errors.New("gateways: listing failed")
	}
	return nil
}

// deploy stores the credential, deploys the sample image everywhere, shows
// the inventory and asks the real container for its page.
func (d *run) deploy(ctx context.Context) error {
	d.step("storing the registry credential for the tenant, checked against the registry first")
	if d.cli(ctx, d.regPass+"\n", "credentials", "set", "--tenant", tenant, "--registry", d.reg.Server.Host,
		"--username", regUser, "--password-stdin", "--check-image", d.image) != 0 {
		return errors.New("credentials set failed")
	}

	specFile := filepath.Join(d.dataDir, "web.yaml")
	spec := fmt.Sprintf(`name: %s
revision: 1
image: %s
env: {PORT: "8080"}
ports:
  - {containerPort: 8080, hostIp: 127.0.0.1}
labels: {io.fleet-agent.demo: %q}
`, deployment, d.image, d.runID)
	if err := os.WriteFile(specFile, []byte(spec), 0o600); err != nil {
		return err
	}
	d.step("deploying %s to every gateway of tenant %s; the credential goes first, sealed to each gateway's key\n%s", d.image, tenant, spec)
	if code := d.cli(ctx, "", "deploy", "--tenant", tenant, "--all", "-f", specFile, "--wait", "3m"); code != 0 {
		return fmt.Errorf("deploy failed on some gateway (exit %d)", code)
	}

	d.step("inventory and deployments")
	d.cli(ctx, "", "gateways", "--tenant", tenant)
	if d.docker == nil {
		return nil
	}
	port, err := hostPort(ctx, d.docker, d.runID)
	if err != nil {
		return err
	}
	body, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%s/", port))
	if err != nil {
		return fmt.Errorf("the real container does not answer HTTP: %w", err)
	}
	d.step("the real container on %s answers GET http://127.0.0.1:%s/ with: %s", realID, port, strings.TrimSpace(body))
	if !strings.Contains(body, d.runID) {
		return fmt.Errorf("unexpected answer %q", body)
	}
	return nil
}

// httpListen is where the demo serves the API and the console: when it
// keeps serving, the usual 127.0.0.1:8080 if that is free, else any port.
func (d *run) httpListen() string {
	if d.opts.Serve {
		if ln, err := net.Listen("tcp", "127.0.0.1:8080"); err == nil {
			ln.Close()
			return "127.0.0.1:8080"
		}
	}
	return "127.0.0.1:0"
}

func dockerAvailable(ctx context.Context) (*dockerclient.Client, error) {
	c, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Ping(pctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// startAgent provisions and runs the real agent; stop ends it.
func startAgent(ctx context.Context, s *serve.Server, docker *dockerclient.Client, dataDir, runID string, log *slog.Logger) (stop func(), err error) {
	labels := map[string]string{"site": "lab", "kind": "real"}
	pw, err := s.Controller.Provision(ctx, tenant, realID, identity.Assignment{Labels: labels})
	if err != nil {
		return nil, err
	}
	pubs, err := s.Controller.CommandKeys(ctx, tenant)
	if err != nil {
		return nil, err
	}
	keys, err := cmdsig.NewVerifier(pubs)
	if err != nil {
		return nil, err
	}
	eng, err := engine.NewDocker("", tenant+"/"+realID+"-"+runID, log)
	if err != nil {
		return nil, err
	}
	stateDir := filepath.Join(dataDir, "agent")
	agent, err := gateway.New(gateway.Config{
		Engine: eng, EngineInfo: eng.Info, InsecureRegistry: eng.InsecureRegistry,
		Tenant: tenant, ID: realID, Scheme: topic.Default(), Encoding: codec.Protobuf, StateDir: stateDir,
		Labels: labels, BrokerURL: s.BrokerURL,
		Username: tenant + "/" + realID, Password: []byte(pw), KeepAlive: 30 * time.Second,
		SessionExpiry: time.Hour, Backoff: backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second},
		RequireSealed: true, RegistryCertsDir: filepath.Join(stateDir, "certs.d"), ImageGC: true,
		ECRToken: awsecr.Fetch, CommandKeys: keys,
		Version: "demo", Logger: log,
	})
	if err != nil {
		eng.Close()
		return nil, err
	}
	agentCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := agent.Run(agentCtx); err != nil {
			log.Error("agent", "err", err)
		}
	}()
	return func() { cancel(); <-done; eng.Close() }, nil
}

func waitOnline(ctx context.Context, c *controller.Controller, want int) error {
	online := true
	for {
		n := len(c.Gateways(inventory.Filter{Tenant: tenant, Online: &online}))
		if n >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d gateways came online", n, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func hostPort(ctx context.Context, docker *dockerclient.Client, runID string) (string, error) {
	cs, err := docker.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "io.fleet-agent.demo="+runID))})
	if err != nil {
		return "", err
	}
	for _, c := range cs {
		for _, p := range c.Ports {
			if p.PrivatePort == 8080 && p.PublicPort != 0 {
				return fmt.Sprint(p.PublicPort), nil
			}
		}
	}
	return "", errors.New("the demo container has no published port")
}

func httpGet(ctx context.Context, url string) (string, error) {
	var last error
	for range 50 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var buf bytes.Buffer
			_, err = buf.ReadFrom(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return buf.String(), nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", last
}

// removeDemoContainers removes what a failed demo left behind.
func removeDemoContainers(docker *dockerclient.Client, runID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, _ := docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "io.fleet-agent.demo="+runID))})
	for _, c := range cs {
		_ = docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
