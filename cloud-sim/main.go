// Command cloud-sim is the cloud side of Fleet Agent: an MQTT broker with
// per-gateway authentication and ACL, emulated registries, the fleet
// controller with its HTTP API and durable state in NATS JetStream,
// simulated gateways, and the CLI that talks to it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	st, _ := os.Stderr.Stat()
	env := cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Interactive: st != nil && st.Mode()&os.ModeCharDevice != 0}
	root := cli.New(env, serveCmd(), fleetCmd(), demoCmd(), brokerCmd(), sampleWebCmd(), versionCmd())
	root.Version = version
	root.SetVersionTemplate("{{.Version}}\n")
	code := cli.Execute(ctx, root, os.Args[1:])
	stop()
	os.Exit(code)
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

func serveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Broker, registries, NATS, controller, HTTP API (and a simulated fleet)",
		Args:  cli.NoArgs,
	}
	config := serveConfig(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := config()
		if err != nil {
			return cli.Usagef("%v", err)
		}
		return runServe(cmd.Context(), cmd.OutOrStdout(), cfg)
	}
	return cmd
}

// serveConfig defines serve's flags on fs and returns what makes the
// serve.Config of their values once they are parsed: the one place that
// maps flags onto the config.
func serveConfig(fs *pflag.FlagSet) func() (serve.Config, error) {
	var cfg serve.Config
	fs.StringVar(&cfg.DataDir, "data", "cloud-sim-data", "data directory: broker sessions, NATS store, keys, simulated gateways")
	fs.StringVar(&cfg.MQTTListen, "mqtt-listen", "127.0.0.1:1883", "embedded MQTT broker address")
	fs.StringVar(&cfg.BrokerURL, "broker", "", "external MQTT broker (mqtt://host:1883, mqtts://…) instead of the embedded one")
	fs.StringVar(&cfg.BrokerUsername, "broker-username", "controller", "with --broker: the controller's username")
	brokerPass := fs.String("broker-password-file", "", "with --broker: file holding the controller's password")
	fs.StringVar(&cfg.NATSURL, "nats", "", "external NATS (nats://host:4222,tls://host2:4222,…) instead of the embedded server")
	fs.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS address (other replicas use it with --nats and --nats-creds)")
	fs.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS login file: one line user:password, or a NATS .creds file (with --nats); embedded, the server's own login (default: nats-login in --data, made on first start)")
	fs.StringVar(&cfg.NATSCA, "nats-ca", "", "with --nats: PEM file of the CA that signs the NATS servers' certificates (TLS is then required)")
	fs.StringVar(&cfg.NATSCert, "nats-cert", "", "with --nats: PEM client certificate for mutual TLS")
	fs.StringVar(&cfg.NATSKey, "nats-key", "", "with --nats: PEM client key for mutual TLS")
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
	return func() (serve.Config, error) {
		var err error
		if cfg.Scheme, err = topic.NewScheme(*prefix); err != nil {
			return cfg, fmt.Errorf("--topic-prefix: %w", err)
		}
		if cfg.BrokerPassword, err = readSecretFile("broker-password-file", *brokerPass); err != nil {
			return cfg, err
		}
		if cfg.APIToken, err = readSecretFile("api-token-file", *tokenFile); err != nil {
			return cfg, err
		}
		if cfg.ControllerPassword, err = readSecretFile("controller-password-file", *ctrlPass); err != nil {
			return cfg, err
		}
		cfg.Logger = logger(true, *level)
		return cfg, nil
	}
}

func runServe(ctx context.Context, out io.Writer, cfg serve.Config) error {
	s, err := serve.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "cloud-sim %s serving\n  MQTT broker  %s\n  NATS         %s\n  HTTP API     %s\n", version, s.BrokerURL.Redacted(), s.NATSURL, s.APIURL)
	if s.NATSCreds != "" {
		fmt.Fprintf(out, "  NATS login   %s (other replicas: --nats %s --nats-creds FILE)\n", s.NATSCreds, s.NATSURL)
	}
	for _, name := range slices.Sorted(maps.Keys(s.Registries)) {
		r := s.Registries[name]
		fmt.Fprintf(out, "  registry     %s at %s %v\n", name, r.Server.URL, r.Images)
	}
	if s.Fleet != nil {
		fmt.Fprintf(out, "  simulated    %d gateways of tenant %s\n", len(s.Fleet.IDs()), cfg.Sim.Tenant)
	}
	<-ctx.Done()
	fmt.Fprintln(out, "stopping")
	if err := s.Close(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

func fleetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet --count N",
		Short: "Simulated gateways against a running serve",
		Args:  cli.NoArgs,
	}
	fs := cmd.Flags()
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
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		u, err := url.Parse(*brokerURL)
		if err != nil {
			return cli.Usagef("--broker: %v", err)
		}
		sim.BrokerURL = u
		return runFleet(cmd.Context(), cmd.OutOrStdout(), *apiURL, sim)
	}
	return cmd
}

func runFleet(ctx context.Context, out io.Writer, apiURL string, sim simfleet.Config) error {
	c := &cli.Client{Base: apiURL, Token: os.Getenv("CLOUD_SIM_TOKEN")}
	var p api.Provisioned
	if err := c.Do(ctx, "POST", "/v1/simulated", api.SimulatedRequest{Tenant: sim.Tenant, Prefix: sim.Prefix, Count: sim.Count}, &p, nil); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	if sim.StateDir == "" {
		dir, err := os.MkdirTemp("", "cloud-sim-fleet-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		sim.StateDir = dir
	}
	sim.Password, sim.Scheme, sim.Encoding = []byte(p.Password), topic.Default(), codec.Protobuf
	sim.Logger = logger(false, "warn")
	f, err := simfleet.Start(ctx, sim)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d simulated gateways of tenant %s running; Ctrl-C stops them (each publishes its death)\n", sim.Count, sim.Tenant)
	<-ctx.Done()
	return f.Close()
}

func demoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "The end-to-end demo (make demo)",
		Args:  cli.NoArgs,
	}
	sims := cmd.Flags().Int("sim-count", 30, "simulated gateways beside the real agent")
	verbose := cmd.Flags().BoolP("verbose", "v", false, "log at info level")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := demo.Run(cmd.Context(), cmd.OutOrStdout(), logger(*verbose, "info"), demo.Options{SimCount: *sims}); err != nil {
			return fmt.Errorf("failed: %w", err)
		}
		return nil
	}
	return cmd
}

func brokerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Only the embedded MQTT v5 broker, without authentication",
		Args:  cli.NoArgs,
	}
	listen := cmd.Flags().String("listen", "127.0.0.1:1883", "address to listen on")
	store := cmd.Flags().String("store", "", "bbolt file persisting sessions and queued messages (none: in memory)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		b, err := broker.Start(broker.Config{Addr: *listen, StorePath: *store, Logger: logger(false, "warn")})
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "broker listening on %s (no authentication: use serve for that)\n", b.URL())
		<-cmd.Context().Done()
		b.Close()
		return nil
	}
	return cmd
}

func sampleWebCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sample-web",
		Short: "The sample web server inside the images cloud-sim pushes ($MESSAGE on $PORT)",
		Args:  cli.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return sampleWeb(cmd.Context()) },
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cli.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) },
	}
}

// sampleWeb is the program of the sample images: GET / answers $MESSAGE,
// GET /healthz 200, on $PORT.
func sampleWeb(ctx context.Context) error {
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
		return err
	}
	return nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
