package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // an error, or a command failed on some gateway
	ExitUsage  = 2
)

// Env is what a verb reads and writes.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Interactive: Stderr is a terminal, so progress bars redraw in place.
	Interactive bool
	Getenv      func(string) string
}

// Verbs lists the client verbs, for usage.
const Verbs = `Client verbs (talk to a running serve: --api URL or CLOUD_SIM_API, default http://127.0.0.1:8080;
token in CLOUD_SIM_TOKEN; -o json prints the API's JSON):
  gateways [--tenant T] [--selector k=v,k!=v] [--group G] [--online true|false]
  gateway TENANT/ID
  provision TENANT/ID [--group G]...                  create a gateway's MQTT identity (prints its password)
  deploy   TARGET -f spec.yaml [--skip-registry-check]
  remove   TARGET NAME [--remove-image]
  start|stop|restart TARGET NAME
  send     TARGET -f command.json                     any protocol Command (protojson)
  credentials set --tenant T --registry R (--username U --password-stdin | --ecr-region R --ecr-access-key-id K --ecr-secret-stdin [--issue-tokens])
                  [--ca-file F] [--require-tls] [--check-image IMAGE] [--push TARGET flags]
  credentials list [--tenant T]
  credentials delete --tenant T --registry R
  check-registry --tenant T IMAGE                     checked from the cloud with the tenant's credential
  batch ID [--wait 5m]                                a sent batch and its outcomes
  rollout create -f rollout.yaml [--watch] | list | status ID [--watch] | pause ID | resume ID | cancel ID
TARGET: --gateway TENANT/ID (repeatable) | --tenant T with --selector k=v, --group G or --all.
Verbs that send wait for every final reply (--wait, default 5m) and exit 1 if any gateway failed.
`

// Run runs one client verb; args[0] is the verb.
func Run(ctx context.Context, env Env, args []string) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	v := &verb{env: env, fs: flag.NewFlagSet("cloud-sim "+args[0], flag.ContinueOnError)}
	v.fs.SetOutput(env.Stderr)
	v.fs.StringVar(&v.apiURL, "api", or(env.Getenv("CLOUD_SIM_API"), "http://127.0.0.1:8080"), "cloud-sim serve API URL")
	v.fs.StringVar(&v.output, "o", "table", "output: table or json")
	var run func(context.Context) error
	switch args[0] {
	case "gateways":
		run = v.listGateways
	case "gateway":
		run = v.gateway
	case "provision":
		run = v.provision
	case "deploy":
		run = v.deploy
	case "remove", "start", "stop", "restart":
		run = v.lifecycle(args[0])
	case "send":
		run = v.send
	case "credentials":
		if len(args) < 2 {
			fmt.Fprint(env.Stderr, "cloud-sim credentials: say set, list or delete\n")
			return ExitUsage
		}
		args = args[1:]
		v.fs.Init("cloud-sim credentials "+args[0], flag.ContinueOnError)
		switch args[0] {
		case "set":
			run = v.credSet
		case "list":
			run = v.credList
		case "delete":
			run = v.credDelete
		default:
			fmt.Fprintf(env.Stderr, "cloud-sim credentials: unknown %q; say set, list or delete\n", args[0])
			return ExitUsage
		}
	case "check-registry":
		run = v.checkRegistry
	case "batch":
		run = v.batch
	case "rollout":
		run = v.rollout
	default:
		return -1
	}
	v.setup(args[0])
	if err := v.fs.Parse(reorder(v.fs, args[1:])); err != nil {
		return ExitUsage
	}
	if v.output != "table" && v.output != "json" {
		fmt.Fprintf(env.Stderr, "-o %q: use table or json\n", v.output)
		return ExitUsage
	}
	v.client = &Client{Base: v.apiURL, Token: env.Getenv("CLOUD_SIM_TOKEN")}
	err := run(ctx)
	var ue usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(env.Stderr, "cloud-sim %s: %v\n", args[0], err)
		return ExitUsage
	case err != nil:
		fmt.Fprintf(env.Stderr, "cloud-sim %s: %v\n", args[0], err)
		return ExitFailed
	}
	return v.exit
}

type usageError string

func (e usageError) Error() string { return string(e) }

type verb struct {
	env    Env
	fs     *flag.FlagSet
	client *Client
	apiURL string
	output string
	exit   int

	// target flags
	gateways multi
	tenant   string
	selector string
	group    string
	all      bool
	wait     time.Duration
	expires  time.Duration
	file     string
	skip     bool
	online   string
	groups   multi
	rmImage  bool
	watch    bool
	// credentials
	registry, username, ecrRegion, ecrKeyID, caFile, checkImage string
	passwordStdin, ecrSecretStdin, issueTokens, requireTLS      bool
	push                                                        bool
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func (v *verb) setup(name string) {
	fs := v.fs
	target := func() {
		fs.Var(&v.gateways, "gateway", "target gateway TENANT/ID (repeatable)")
		fs.StringVar(&v.tenant, "tenant", "", "tenant of --selector, --group or --all")
		fs.StringVar(&v.selector, "selector", "", "label selector: k=v,k!=v,k,!k")
		fs.StringVar(&v.group, "group", "", "target a group")
		fs.BoolVar(&v.all, "all", false, "target every gateway of --tenant")
		fs.DurationVar(&v.wait, "wait", 5*time.Minute, "how long to wait for the final replies (0: do not wait)")
		fs.DurationVar(&v.expires, "expires-in", 0, "gateways refuse the command when they get it later than this (0: never)")
	}
	switch name {
	case "gateways":
		fs.StringVar(&v.tenant, "tenant", "", "only this tenant")
		fs.StringVar(&v.selector, "selector", "", "label selector: k=v,k!=v,k,!k")
		fs.StringVar(&v.group, "group", "", "only members of this group")
		fs.StringVar(&v.online, "online", "", "true or false: only online or offline gateways")
	case "provision":
		fs.Var(&v.groups, "group", "group whose command topics the gateway may read (repeatable)")
	case "deploy":
		target()
		fs.StringVar(&v.file, "f", "", "deployment spec, YAML or JSON (a protocol DeploymentSpec)")
		fs.BoolVar(&v.skip, "skip-registry-check", false, "do not check the image and credential from the cloud first")
	case "remove", "start", "stop", "restart":
		target()
		fs.BoolVar(&v.rmImage, "remove-image", false, "remove: also remove the image")
	case "send":
		target()
		fs.StringVar(&v.file, "f", "", "protocol Command, JSON or YAML (- for stdin)")
	case "set":
		fs.StringVar(&v.tenant, "tenant", "", "tenant the credential belongs to")
		fs.StringVar(&v.registry, "registry", "", "registry host[:port][/repository-prefix]")
		fs.StringVar(&v.username, "username", "", "basic: username (_json_key for GCR/GAR service-account keys)")
		fs.BoolVar(&v.passwordStdin, "password-stdin", false, "basic: read the password or token from stdin")
		fs.StringVar(&v.ecrRegion, "ecr-region", "", "ecr: region (read from the host when it is an ECR host)")
		fs.StringVar(&v.ecrKeyID, "ecr-access-key-id", "", "ecr: access key id")
		fs.BoolVar(&v.ecrSecretStdin, "ecr-secret-stdin", false, "ecr: read the secret access key from stdin")
		fs.BoolVar(&v.issueTokens, "issue-tokens", false, "ecr: gateways get 12-hour tokens issued by the controller, never the AWS keys")
		fs.StringVar(&v.caFile, "ca-file", "", "PEM CA certificate of a registry with a private CA")
		fs.BoolVar(&v.requireTLS, "require-tls", false, "gateways verify HTTPS themselves before each pull")
		fs.StringVar(&v.checkImage, "check-image", "", "check this image with the credential first; refuse the credential if the registry does")
		fs.BoolVar(&v.push, "push", false, "also send it, sealed, to the target gateways now")
		fs.Var(&v.gateways, "gateway", "with --push: target gateway TENANT/ID (repeatable)")
		fs.StringVar(&v.selector, "selector", "", "with --push: label selector")
		fs.StringVar(&v.group, "group", "", "with --push: group")
		fs.BoolVar(&v.all, "all", false, "with --push: every gateway of --tenant")
		fs.DurationVar(&v.wait, "wait", 5*time.Minute, "with --push: how long to wait for replies")
	case "list":
		fs.StringVar(&v.tenant, "tenant", "", "only this tenant")
	case "delete":
		fs.StringVar(&v.tenant, "tenant", "", "tenant")
		fs.StringVar(&v.registry, "registry", "", "registry scope to delete")
	case "check-registry":
		fs.StringVar(&v.tenant, "tenant", "", "tenant whose credential to use")
	case "batch":
		fs.DurationVar(&v.wait, "wait", 0, "wait up to this long for every final reply")
	case "rollout":
		fs.StringVar(&v.file, "f", "", "create: rollout spec, YAML or JSON")
		fs.BoolVar(&v.watch, "watch", false, "status (and create): follow until the rollout ends")
	}
}

// reorder puts flags before positional arguments, so that
// `cloud-sim stop --gateway x web --wait 1m` parses as people type it.
func reorder(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil {
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
				continue
			}
			if i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		}
	}
	return append(flags, pos...)
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (v *verb) printJSON(raw []byte) {
	v.env.Stdout.Write(raw)
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		fmt.Fprintln(v.env.Stdout)
	}
}

// fetch GETs path into out; with -o json it prints the response as it
// came and reports that nothing is left to print.
func (v *verb) fetch(ctx context.Context, path string, out any) (printed bool, err error) {
	var raw []byte
	if err := v.client.Do(ctx, "GET", path, nil, out, &raw); err != nil {
		return false, err
	}
	if v.output == "json" {
		v.printJSON(raw)
		return true, nil
	}
	return false, nil
}

func (v *verb) table() *tabwriter.Writer { return tabwriter.NewWriter(v.env.Stdout, 2, 4, 2, ' ', 0) }

func (v *verb) listGateways(ctx context.Context) error {
	q := url.Values{}
	for k, val := range map[string]string{"tenant": v.tenant, "selector": v.selector, "group": v.group, "online": v.online} {
		if val != "" {
			q.Set(k, val)
		}
	}
	var list api.GatewayList
	if printed, err := v.fetch(ctx, "/v1/gateways?"+q.Encode(), &list); printed || err != nil {
		return err
	}
	tw := v.table()
	fmt.Fprintln(tw, "TENANT\tGATEWAY\tSTATE\tSESSION\tAGENT\tENGINE\tDEPLOYMENTS\tLAST SEEN\tLABELS")
	for _, g := range list.Gateways {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", g.Tenant, g.ID, gatewayState(g), g.Session, g.AgentVersion,
			engineName(g), deploymentsSummary(g), ago(g.LastSeen), labels(g.Labels))
	}
	tw.Flush()
	fmt.Fprintf(v.env.Stdout, "%d gateways, %d online, %d stale\n", list.Count, list.Online, list.Stale)
	return nil
}

func gatewayState(g *api.Gateway) string {
	switch {
	case g.Online && g.Stale:
		return "stale"
	case g.Online:
		return "online"
	case g.DeathReason != "":
		return "offline (" + g.DeathReason + ")"
	}
	return "offline"
}

func engineName(g *api.Gateway) string {
	if g.Engine == nil {
		return "-"
	}
	s := g.Engine.Name + " " + g.Engine.Version
	if !g.Engine.Reachable {
		s += " (unreachable)"
	}
	if g.Simulated {
		s += " [simulated]"
	}
	return s
}

func deploymentsSummary(g *api.Gateway) string {
	if len(g.Deployments) == 0 {
		return "-"
	}
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(g.Deployments)) {
		d := g.Deployments[name]
		parts = append(parts, fmt.Sprintf("%s@%d:%s", name, d.Revision, d.Phase))
	}
	return strings.Join(parts, " ")
}

func labels(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Truncate(time.Second).String() + " ago"
}

func splitGateway(s string) (string, string, error) {
	t, id, ok := strings.Cut(s, "/")
	if !ok || t == "" || id == "" {
		return "", "", usageError(fmt.Sprintf("gateway %q: write TENANT/ID, e.g. acme/gw-1", s))
	}
	return t, id, nil
}

func (v *verb) gateway(ctx context.Context) error {
	if v.fs.NArg() != 1 {
		return usageError("give one gateway as TENANT/ID")
	}
	t, id, err := splitGateway(v.fs.Arg(0))
	if err != nil {
		return err
	}
	var g api.Gateway
	if printed, err := v.fetch(ctx, "/v1/gateways/"+escape(t, id), &g); printed || err != nil {
		return err
	}
	tw := v.table()
	fmt.Fprintf(tw, "gateway\t%s/%s\n", g.Tenant, g.ID)
	fmt.Fprintf(tw, "state\t%s (session %d, last seen %s)\n", gatewayState(&g), g.Session, ago(g.LastSeen))
	fmt.Fprintf(tw, "agent\t%s (protocol %d)\n", g.AgentVersion, g.ProtocolVersion)
	fmt.Fprintf(tw, "engine\t%s\n", engineName(&g))
	if g.Host != nil {
		fmt.Fprintf(tw, "host\t%s %s/%s, %d CPUs\n", g.Host.Hostname, g.Host.OS, g.Host.Arch, g.Host.CPUs)
	}
	fmt.Fprintf(tw, "labels\t%s\n", labels(g.Labels))
	fmt.Fprintf(tw, "groups\t%s\n", strings.Join(g.Groups, ","))
	for _, r := range g.Registries {
		fmt.Fprintf(tw, "registry\t%s %s %s fingerprint %s %s\n", r.Registry, r.Kind, r.Username, r.Fingerprint, r.Warning)
	}
	tw.Flush()
	tw = v.table()
	fmt.Fprintln(tw, "\nDEPLOYMENT\tREVISION\tPHASE\tHEALTH\tIMAGE\tMESSAGE")
	for _, name := range slices.Sorted(maps.Keys(g.Deployments)) {
		d := g.Deployments[name]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", d.Name, d.Revision, d.Phase, or(d.Health, "-"), d.Image, d.Message)
	}
	tw.Flush()
	return nil
}

func (v *verb) provision(ctx context.Context) error {
	if v.fs.NArg() != 1 {
		return usageError("give one gateway as TENANT/ID")
	}
	t, id, err := splitGateway(v.fs.Arg(0))
	if err != nil {
		return err
	}
	var p api.Provisioned
	var raw []byte
	if err := v.client.Do(ctx, "POST", "/v1/gateways/"+escape(t, id)+"/provision", api.ProvisionRequest{Groups: v.groups}, &p, &raw); err != nil {
		return err
	}
	if v.output == "json" {
		v.printJSON(raw)
		return nil
	}
	fmt.Fprintf(v.env.Stdout, "username:  %s\nclient id: %s\npassword:  %s\n(shown once; give it to fleet-agent with --broker-username and --broker-password-file)\n", p.Username, p.ClientID, p.Password)
	return nil
}

// target builds the request target from the flags.
func (v *verb) target() (api.Target, error) {
	var t api.Target
	for _, g := range v.gateways {
		tenant, id, err := splitGateway(g)
		if err != nil {
			return t, err
		}
		if t.Tenant != "" && t.Tenant != tenant {
			return t, usageError("every --gateway must be of one tenant")
		}
		t.Tenant = tenant
		t.Gateways = append(t.Gateways, id)
	}
	if len(t.Gateways) == 0 {
		if v.tenant == "" || (v.selector == "" && v.group == "" && !v.all) {
			return t, usageError("say where: --gateway TENANT/ID, or --tenant T with --selector k=v, --group G or --all")
		}
		t.Tenant, t.Selector, t.Group, t.All = v.tenant, v.selector, v.group, v.all
	} else if v.tenant != "" && v.tenant != t.Tenant {
		return t, usageError("--tenant differs from the --gateway tenant")
	}
	return t, nil
}

// readDoc reads a YAML or JSON file (- for stdin) as JSON.
func (v *verb) readDoc(path string) ([]byte, error) {
	if path == "" {
		return nil, usageError("-f FILE is required")
	}
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(v.env.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return json.Marshal(doc)
}

// readProto reads -f (YAML or JSON) into m, a protocol message.
func (v *verb) readProto(what string, m proto.Message) error {
	raw, err := v.readDoc(v.file)
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(raw, m); err != nil {
		return fmt.Errorf("%s is not %s: %w", v.file, what, err)
	}
	return nil
}

func (v *verb) deploy(ctx context.Context) error {
	t, err := v.target()
	if err != nil {
		return err
	}
	spec := new(fleetv1.DeploymentSpec)
	if err := v.readProto("a deployment spec", spec); err != nil {
		return err
	}
	return v.sendAndWait(ctx, t, &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: spec}}})
}

func (v *verb) lifecycle(name string) func(context.Context) error {
	return func(ctx context.Context) error {
		t, err := v.target()
		if err != nil {
			return err
		}
		if v.fs.NArg() != 1 {
			return usageError("give the deployment name")
		}
		ref := &fleetv1.DeploymentRef{Name: v.fs.Arg(0), RemoveImage: v.rmImage}
		cmd := &fleetv1.Command{}
		switch name {
		case "remove":
			cmd.Body = &fleetv1.Command_Remove{Remove: ref}
		case "start":
			cmd.Body = &fleetv1.Command_Start{Start: ref}
		case "stop":
			cmd.Body = &fleetv1.Command_Stop{Stop: ref}
		case "restart":
			cmd.Body = &fleetv1.Command_Restart{Restart: ref}
		}
		return v.sendAndWait(ctx, t, cmd)
	}
}

func (v *verb) send(ctx context.Context) error {
	t, err := v.target()
	if err != nil {
		return err
	}
	cmd := new(fleetv1.Command)
	if err := v.readProto("a protocol Command", cmd); err != nil {
		return err
	}
	return v.sendAndWait(ctx, t, cmd)
}

// sendAndWait posts the command, then follows the batch until every
// gateway has answered or --wait passes, drawing progress on stderr.
func (v *verb) sendAndWait(ctx context.Context, t api.Target, cmd *fleetv1.Command) error {
	body, err := protojson.Marshal(cmd)
	if err != nil {
		return err
	}
	req := api.CommandRequest{Target: t, Command: body, SkipRegistryCheck: v.skip}
	if v.expires > 0 {
		req.ExpiresIn = v.expires.String()
	}
	var b api.BatchView
	if err := v.client.Do(ctx, "POST", "/v1/commands", req, &b, nil); err != nil {
		return err
	}
	for _, w := range b.Warnings {
		fmt.Fprintln(v.env.Stderr, "warning:", w)
	}
	return v.follow(ctx, b.ID, v.wait)
}

func (v *verb) follow(ctx context.Context, id string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var b api.BatchView
	var raw []byte
	p := progress{w: v.env.Stderr, interactive: v.env.Interactive}
	for {
		b = api.BatchView{} // decoding into a used map would keep old counts
		step := min(time.Until(deadline), 500*time.Millisecond).Truncate(time.Millisecond)
		path := "/v1/batches/" + escape(id)
		if step > 0 {
			path += "?wait=" + step.String()
		}
		if err := v.client.Do(ctx, "GET", path, nil, &b, &raw); err != nil {
			return err
		}
		if wait > 0 {
			p.draw(&b)
		}
		if b.Done || !time.Now().Before(deadline) {
			break
		}
	}
	p.end()
	if v.output == "json" {
		v.printJSON(raw)
	} else {
		v.batchTable(&b)
	}
	switch {
	case b.Failed > 0:
		v.exit = ExitFailed
	case !b.Done && wait > 0:
		fmt.Fprintf(v.env.Stderr, "not every gateway answered within %s; follow with `cloud-sim batch %s --wait 10m`\n", wait, b.ID)
		v.exit = ExitFailed
	}
	return nil
}

func (v *verb) batchTable(b *api.BatchView) {
	tw := v.table()
	fmt.Fprintln(tw, "GATEWAY\tVERB\tSTATE\tCODE\tMESSAGE")
	for _, c := range b.Commands {
		st := c.State
		if c.OfflineWhenSent && !c.Final() {
			st += " (offline: queued at the broker)"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", c.Tenant, c.Gateway, c.Verb, st, or(c.Code, "-"), oneLine(c.Message))
	}
	tw.Flush()
	var counts []string
	for _, k := range slices.Sorted(maps.Keys(b.Counts)) {
		counts = append(counts, fmt.Sprintf("%d %s", b.Counts[k], strings.ToLower(k)))
	}
	fmt.Fprintf(v.env.Stdout, "batch %s: %s\n", b.ID, strings.Join(counts, ", "))
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func (v *verb) batch(ctx context.Context) error {
	if v.fs.NArg() != 1 {
		return usageError("give the batch id")
	}
	return v.follow(ctx, v.fs.Arg(0), v.wait)
}

// progress draws "[#####-----] 12/40 answered, 1 failed" on a terminal,
// and a line every 5 s elsewhere.
type progress struct {
	w           io.Writer
	interactive bool
	last        time.Time
	drawn       bool
}

func (p *progress) draw(b *api.BatchView) {
	total := len(b.Commands)
	done := total - b.Counts[api.StatePending] - b.Counts[api.StateAccepted]
	p.show(done, total, fmt.Sprintf("answered, %d failed, %d pending", b.Failed, b.Counts[api.StatePending]), b.Done)
}

// show draws "[####------] done/total detail": in place on a terminal,
// else a line every 5 s and the final one.
func (p *progress) show(done, total int, detail string, final bool) {
	if total == 0 {
		return
	}
	const width = 30
	bar := strings.Repeat("#", done*width/total) + strings.Repeat("-", width-done*width/total)
	line := fmt.Sprintf("[%s] %d/%d %s", bar, done, total, detail)
	switch {
	case p.interactive:
		fmt.Fprintf(p.w, "\r%s", line)
		p.drawn = true
	case time.Since(p.last) >= 5*time.Second || final:
		fmt.Fprintln(p.w, line)
		p.last = time.Now()
	}
}

func (p *progress) end() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func (v *verb) credSet(ctx context.Context) error {
	if v.tenant == "" || v.registry == "" {
		return usageError("--tenant and --registry are required")
	}
	cr := &fleetv1.Credential{Registry: v.registry, RequireTls: v.requireTLS}
	readSecret := func() (string, error) {
		b, err := io.ReadAll(v.env.Stdin)
		return strings.TrimRight(string(b), "\r\n"), err
	}
	switch {
	case v.username != "":
		if !v.passwordStdin {
			return usageError("--username needs --password-stdin: passwords are never taken on the command line")
		}
		pw, err := readSecret()
		if err != nil {
			return err
		}
		cr.Kind = &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: v.username, Password: pw}}
	case v.ecrRegion != "" || v.ecrKeyID != "":
		e := &fleetv1.EcrAuth{Region: v.ecrRegion, AccessKeyId: v.ecrKeyID}
		if v.ecrSecretStdin {
			s, err := readSecret()
			if err != nil {
				return err
			}
			e.SecretAccessKey = s
		}
		cr.Kind = &fleetv1.Credential_Ecr{Ecr: e}
	default:
		cr.Kind = &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}
	}
	if v.caFile != "" {
		pem, err := os.ReadFile(v.caFile)
		if err != nil {
			return err
		}
		cr.CaCertificate = string(pem)
	}
	body, err := protojson.Marshal(cr)
	if err != nil {
		return err
	}
	var view api.CredentialView
	var raw []byte
	err = v.client.Do(ctx, "PUT", "/v1/tenants/"+escape(v.tenant)+"/credentials",
		api.CredentialRequest{Credential: body, IssueTokens: v.issueTokens, CheckImage: v.checkImage}, &view, &raw)
	if err != nil {
		return err
	}
	if v.output == "json" && !v.push {
		v.printJSON(raw)
	} else if v.output != "json" {
		fmt.Fprintf(v.env.Stdout, "credential for %s stored (%s, fingerprint %s)\n", view.Registry, view.Kind, view.Fingerprint)
	}
	if !v.push {
		return nil
	}
	// Pushing sends the stored credential (or the token issued from it),
	// sealed to each gateway by the controller.
	t, err := v.target()
	if err != nil {
		return err
	}
	var b api.BatchView
	if err := v.client.Do(ctx, "POST", "/v1/tenants/"+escape(v.tenant)+"/credentials/push",
		api.PushRequest{Target: t, Registry: view.Registry}, &b, nil); err != nil {
		return err
	}
	for _, w := range b.Warnings {
		fmt.Fprintln(v.env.Stderr, "warning:", w)
	}
	return v.follow(ctx, b.ID, v.wait)
}

func (v *verb) credList(ctx context.Context) error {
	if v.tenant == "" {
		return usageError("--tenant is required")
	}
	var out struct {
		Credentials []api.CredentialView `json:"credentials"`
	}
	if printed, err := v.fetch(ctx, "/v1/tenants/"+escape(v.tenant)+"/credentials", &out); printed || err != nil {
		return err
	}
	tw := v.table()
	fmt.Fprintln(tw, "REGISTRY\tKIND\tUSERNAME\tFINGERPRINT\tTOKEN EXPIRES\tLAST CHECK")
	for _, c := range out.Credentials {
		check := "-"
		if c.LastCheck != nil {
			check = or(c.LastCheck.Code, "OK") + " " + c.LastCheck.Image
		}
		exp := "-"
		if !c.TokenExpiresAt.IsZero() {
			exp = c.TokenExpiresAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Registry, c.Kind, or(c.Username, "-"), or(c.Fingerprint, "-"), exp, check)
	}
	tw.Flush()
	return nil
}

func (v *verb) credDelete(ctx context.Context) error {
	if v.tenant == "" || v.registry == "" {
		return usageError("--tenant and --registry are required")
	}
	if err := v.client.Do(ctx, "DELETE", "/v1/tenants/"+escape(v.tenant)+"/credentials/"+v.registry, nil, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(v.env.Stdout, "credential for %s deleted (gateways keep theirs until sent delete-credentials)\n", v.registry)
	return nil
}

func (v *verb) checkRegistry(ctx context.Context) error {
	if v.tenant == "" || v.fs.NArg() != 1 {
		return usageError("give --tenant T and one IMAGE")
	}
	var res api.CheckResult
	var raw []byte
	if err := v.client.Do(ctx, "POST", "/v1/tenants/"+escape(v.tenant)+"/check-registry", map[string]string{"image": v.fs.Arg(0)}, &res, &raw); err != nil {
		return err
	}
	if v.output == "json" {
		v.printJSON(raw)
	} else {
		tw := v.table()
		fmt.Fprintf(tw, "image\t%s\n", res.Image)
		fmt.Fprintf(tw, "credential\t%s\n", or(res.Registry, "none (anonymous)"))
		for _, k := range slices.Sorted(maps.Keys(res.Check)) {
			fmt.Fprintf(tw, "%s\t%v\n", k, res.Check[k])
		}
		fmt.Fprintf(tw, "result\t%s %s\n", or(res.Code, "OK"), res.Message)
		tw.Flush()
	}
	if !res.OK {
		v.exit = ExitFailed
	}
	return nil
}
