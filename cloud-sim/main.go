// Command cloud-sim is the cloud side of Fleet Agent: an MQTT broker with
// per-gateway authentication and ACL, emulated registries, the fleet
// controller with its HTTP API and durable state in NATS JetStream,
// simulated gateways, and the CLI that talks to it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/cli"
	"github.com/fleet-agent/fleet/cloud-sim/demo"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

var version = "dev"

const usage = `cloud-sim is the cloud side of Fleet Agent.

Usage:
  cloud-sim serve [flags]        broker, registries, NATS, controller, HTTP API (and a simulated fleet)
  cloud-sim fleet --count N      simulated gateways against a running serve
  cloud-sim demo                 the end-to-end demo (make demo)
  cloud-sim broker               only the embedded MQTT v5 broker, without authentication
  cloud-sim sample-web           the sample web server inside the images cloud-sim pushes

` + cli.Verbs + `
Run "cloud-sim serve -h" (or any verb with -h) for its flags.
`

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:])
	case "fleet":
		return cmdFleet(ctx, args[1:])
	case "broker":
		return cmdBroker(ctx, args[1:])
	case "demo":
		fs := flag.NewFlagSet("cloud-sim demo", flag.ContinueOnError)
		sims := fs.Int("sim-count", 30, "simulated gateways beside the real agent")
		verbose := fs.Bool("v", false, "log at info level")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if err := demo.Run(ctx, os.Stdout, logger(*verbose, "info"), demo.Options{SimCount: *sims}); err != nil {
			fmt.Fprintln(os.Stderr, "demo failed:", err)
			return 1
		}
		return 0
	case "sample-web":
		return sampleWeb(ctx)
	case "version", "--version":
		fmt.Println(version)
		return 0
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	}
	st, _ := os.Stderr.Stat()
	env := cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Interactive: st != nil && st.Mode()&os.ModeCharDevice != 0}
	if code := cli.Run(ctx, env, args); code >= 0 {
		return code
	}
	fmt.Fprintf(os.Stderr, "cloud-sim: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func logger(verbose bool, level string) *slog.Logger {
	lv := slog.LevelWarn
	if verbose {
		lv = slog.LevelInfo
	}
	switch level {
	case "debug":
		lv = slog.LevelDebug
	case "info":
		if verbose {
			lv = slog.LevelInfo
		}
	case "error":
		lv = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
}

func readSecretFile(flagName, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flagName, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func cmdServe(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("cloud-sim serve", flag.ContinueOnError)
	var cfg serve.Config
	fs.StringVar(&cfg.DataDir, "data", "cloud-sim-data", "data directory: broker sessions, NATS store, keys, simulated gateways")
	fs.StringVar(&cfg.MQTTListen, "mqtt-listen", "127.0.0.1:1883", "embedded MQTT broker address")
	fs.StringVar(&cfg.BrokerURL, "broker", "", "external MQTT broker (mqtt://host:1883, mqtts://…) instead of the embedded one")
	fs.StringVar(&cfg.BrokerUsername, "broker-username", "controller", "with --broker: the controller's username")
	brokerPass := fs.String("broker-password-file", "", "with --broker: file holding the controller's password")
	fs.StringVar(&cfg.NATSURL, "nats", "", "external NATS (nats://host:4222,…) instead of the embedded server")
	fs.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS address (other replicas can use it with --nats)")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "127.0.0.1:8080", "HTTP API address")
	tokenFile := fs.String("api-token-file", "", "file holding a token the API requires as Authorization: Bearer")
	fs.StringVar(&cfg.Registries, "registries", "", "registries file: emulated registries, their users and images")
	fs.StringVar(&cfg.SecretsKey, "secrets-key", "", "key encrypting credentials at rest (default: controller.key in --data)")
	prefix := fs.String("topic-prefix", topic.DefaultPrefix, "MQTT topic prefix")
	fs.StringVar(&cfg.ControllerID, "controller-id", "controller", "this replica's MQTT client id; replicas sharing a broker and NATS need different ones")
	ctrlPass := fs.String("controller-password-file", "", "embedded broker: file holding the password of user controller, for other replicas (random when empty)")
	fs.DurationVar(&cfg.StaleAfter, "stale-after", 2*time.Minute, "an online gateway silent this long is shown as stale")
	fs.DurationVar(&cfg.Retention, "retention", 30*24*time.Hour, "finished commands and rollouts older than this are forgotten (checked hourly)")
	fs.IntVar(&cfg.Sim.Count, "sim-count", 0, "run this many simulated gateways in the process")
	fs.StringVar(&cfg.Sim.Tenant, "sim-tenant", "sim", "tenant of the simulated gateways")
	fs.DurationVar(&cfg.Sim.PullTime, "sim-pull-time", time.Second, "simulated pull duration")
	fs.Float64Var(&cfg.Sim.FailureRate, "sim-failure-rate", 0, "share of simulated pulls that fail (0-1)")
	fs.Float64Var(&cfg.Sim.CrashRate, "sim-crash-rate", 0, "share of simulated containers that crash (0-1)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if cfg.Scheme, err = topic.NewScheme(*prefix); err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim serve: --topic-prefix:", err)
		return 2
	}
	if cfg.BrokerPassword, err = readSecretFile("broker-password-file", *brokerPass); err == nil {
		cfg.APIToken, err = readSecretFile("api-token-file", *tokenFile)
	}
	if err == nil {
		cfg.ControllerPassword, err = readSecretFile("controller-password-file", *ctrlPass)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim serve:", err)
		return 2
	}
	cfg.Logger = logger(true, *level)
	s, err := serve.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim serve:", err)
		return 1
	}
	fmt.Printf("cloud-sim %s serving\n  MQTT broker  %s\n  NATS         %s\n  HTTP API     %s\n", version, s.BrokerURL.Redacted(), s.Store.URL(), s.APIURL)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range s.Registries {
			if !yield(n) {
				return
			}
		}
	}) {
		r := s.Registries[name]
		fmt.Printf("  registry     %s at %s %v\n", name, r.Server.URL, r.Images)
	}
	if s.Fleet != nil {
		fmt.Printf("  simulated    %d gateways of tenant %s\n", len(s.Fleet.IDs()), cfg.Sim.Tenant)
	}
	<-ctx.Done()
	fmt.Println("stopping")
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim serve: stop:", err)
		return 1
	}
	return 0
}

func cmdFleet(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("cloud-sim fleet", flag.ContinueOnError)
	var sim simfleet.Config
	apiURL := fs.String("api", or(os.Getenv("CLOUD_SIM_API"), "http://127.0.0.1:8080"), "cloud-sim serve API, to provision the gateways")
	brokerURL := fs.String("broker", "mqtt://127.0.0.1:1883", "MQTT broker the gateways connect to")
	fs.IntVar(&sim.Count, "count", 10, "number of simulated gateways")
	fs.StringVar(&sim.Tenant, "tenant", "sim", "their tenant")
	fs.StringVar(&sim.Prefix, "prefix", "sim-", "their id prefix: {prefix}1, {prefix}2, …")
	fs.StringVar(&sim.StateDir, "state", "", "state directory (default: a temporary one, removed at exit)")
	fs.DurationVar(&sim.PullTime, "pull-time", time.Second, "simulated pull duration")
	fs.Float64Var(&sim.FailureRate, "failure-rate", 0, "share of pulls that fail (0-1)")
	fs.Float64Var(&sim.CrashRate, "crash-rate", 0, "share of started containers that crash (0-1)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	u, err := url.Parse(*brokerURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim fleet: --broker:", err)
		return 2
	}
	c := &cli.Client{Base: *apiURL, Token: os.Getenv("CLOUD_SIM_TOKEN")}
	var p api.Provisioned
	if err := c.Do(ctx, "POST", "/v1/simulated", api.SimulatedRequest{Tenant: sim.Tenant, Prefix: sim.Prefix, Count: sim.Count}, &p, nil); err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim fleet: provision:", err)
		return 1
	}
	if sim.StateDir == "" {
		dir, err := os.MkdirTemp("", "cloud-sim-fleet-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "cloud-sim fleet:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		sim.StateDir = dir
	}
	sim.BrokerURL, sim.Password, sim.Scheme, sim.Encoding = u, []byte(p.Password), topic.Default(), codec.Protobuf
	sim.Logger = logger(false, "warn")
	f, err := simfleet.Start(ctx, sim)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim fleet:", err)
		return 1
	}
	fmt.Printf("%d simulated gateways of tenant %s running; Ctrl-C stops them (each publishes its death)\n", sim.Count, sim.Tenant)
	<-ctx.Done()
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim fleet:", err)
		return 1
	}
	return 0
}

func cmdBroker(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("cloud-sim broker", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:1883", "address to listen on")
	store := fs.String("store", "", "bbolt file persisting sessions and queued messages (none: in memory)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	b, err := broker.Start(broker.Config{Addr: *listen, StorePath: *store, Logger: logger(false, "warn")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloud-sim:", err)
		return 1
	}
	fmt.Printf("broker listening on %s (no authentication: use serve for that)\n", b.URL())
	<-ctx.Done()
	b.Close()
	return 0
}

// sampleWeb is the program of the sample images: GET / answers $MESSAGE,
// GET /healthz 200, on $PORT.
func sampleWeb(ctx context.Context) int {
	msg, port := or(os.Getenv("MESSAGE"), "hello from cloud-sim"), or(os.Getenv("PORT"), "8080")
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, msg+"\n") })
	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "sample-web:", err)
		return 1
	}
	return 0
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
