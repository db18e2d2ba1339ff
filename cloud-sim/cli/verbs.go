package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

const defaultAPI = "http://127.0.0.1:8080"

// verb is one client verb's flags and state: each command has its own.
type verb struct {
	env       Env
	client    *apiclient.Client
	apiURL    string
	tokenFile string
	dataDir   string
	output    string
	args      []string // positional
	exit      int

	// target flags
	gateways []string
	tenant   string
	selector string
	group    string
	all      bool
	wait     time.Duration
	expires  time.Duration

	file    string
	skip    bool
	online  string
	groups  []string
	labels  []string
	rmImage bool
	watch   bool
	// credentials
	registry, username, ecrRegion, ecrKeyID, caFile, checkImage string
	passwordStdin, ecrSecretStdin, issueTokens, requireTLS      bool
	insecure                                                    bool
	push                                                        bool
	compose                                                     composeOpts
}

// command makes cmd a client verb: it gets --api and -o, and its RunE
// calls run with the client built from them.
func (v *verb) command(cmd *cobra.Command, run func(context.Context) error) *cobra.Command {
	fs := cmd.Flags()
	fs.StringVar(&v.apiURL, "api", or(v.env.Getenv("CLOUD_SIM_API"), defaultAPI), "cloud-sim serve API URL (or CLOUD_SIM_API)")
	fs.StringVar(&v.tokenFile, "api-token-file", "", "file holding the API token (else CLOUD_SIM_TOKEN, else the api-token file in --data)")
	fs.StringVar(&v.dataDir, "data", DefaultDataDir, "serve's data directory, where it made the API token (api-token)")
	fs.StringVarP(&v.output, "output", "o", "table", "output: table or json (the API's JSON)")
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if v.output != "table" && v.output != "json" {
			return Usagef("-o %q: use table or json", v.output)
		}
		v.args = args
		var err error
		if v.client, err = v.newClient(); err != nil {
			return Usagef("%v", err)
		}
		if err := run(cmd.Context()); err != nil {
			return err
		}
		if v.exit != ExitOK {
			return exitCode(v.exit)
		}
		return nil
	}
	return cmd
}

func (v *verb) newClient() (*apiclient.Client, error) {
	token, source, err := FindToken(v.tokenFile, v.dataDir, v.env.Getenv)
	if err != nil {
		return nil, err
	}
	c := &apiclient.Client{Base: v.apiURL, Token: token}
	if token == "" {
		c.NoTokenHelp = source
	}
	return c, nil
}

// NoArgs refuses positional arguments (a usage error), for commands that
// take none.
func NoArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return Usagef("unexpected argument %q", args[0])
	}
	return nil
}

const targetHelp = `TARGET: --gateway TENANT/ID (repeatable), or --tenant T with --selector k=v,
--group G or --all. The verb waits for every final reply (--wait) and exits
1 if any gateway failed.`

// targetFlags adds the flags that say which gateways a command goes to.
func (v *verb) targetFlags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringArrayVar(&v.gateways, "gateway", nil, "target gateway `TENANT/ID` (repeatable)")
	fs.StringVar(&v.tenant, "tenant", "", "tenant of --selector, --group or --all")
	fs.StringVar(&v.selector, "selector", "", "label selector: k=v,k!=v,k,!k")
	fs.StringVar(&v.group, "group", "", "target a group")
	fs.BoolVar(&v.all, "all", false, "target every gateway of --tenant")
	fs.DurationVar(&v.wait, "wait", 5*time.Minute, "how long to wait for the final replies (0: do not wait)")
	fs.DurationVar(&v.expires, "expires-in", 0, "gateways refuse the command when they get it later than this (0: never)")
	v.completeGatewayFlags(cmd)
}

func gatewaysCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "gateways [--tenant T] [--selector k=v,k!=v] [--group G] [--online true|false]",
		Short: "List gateways",
		Args:  NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&v.tenant, "tenant", "", "only this tenant")
	fs.StringVar(&v.selector, "selector", "", "label selector: k=v,k!=v,k,!k")
	fs.StringVar(&v.group, "group", "", "only members of this group")
	fs.StringVar(&v.online, "online", "", "true or false: only online or offline gateways")
	cmd.RegisterFlagCompletionFunc("online", cobra.FixedCompletions([]string{"true", "false"}, cobra.ShellCompDirectiveNoFileComp))
	v.completeGatewayFlags(cmd)
	return v.command(cmd, v.listGateways)
}

func gatewayCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:               "gateway TENANT/ID",
		Short:             "Show a gateway: state, engine, host, registries, deployments",
		ValidArgsFunction: v.completeGatewayArg,
	}
	return v.command(cmd, v.gateway)
}

func provisionCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "provision TENANT/ID [--group G]... [--label K=V]...",
		Short: "Create a gateway's MQTT identity, or give it a new password (prints it)",
		Long: "Create a gateway's MQTT identity with a random password, printed once. On a provisioned gateway: a new\n" +
			"password; a session logged in with the old one is disconnected at once, and groups and labels not given\nare kept.",
	}
	cmd.Flags().StringArrayVar(&v.groups, "group", nil, "group whose command topics the gateway may read and by which it is targeted (repeatable)")
	cmd.Flags().StringArrayVar(&v.labels, "label", nil, "label `KEY=VALUE` the cloud targets the gateway by (repeatable)")
	return v.command(cmd, v.provision)
}

func deployCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "deploy TARGET -f spec.yaml [--skip-registry-check]",
		Short: "Deploy a deployment spec or a Compose file to gateways",
		Long: "Deploy a deployment spec (a protocol DeploymentSpec, YAML or JSON) or a Compose file (an application of\n" +
			"several services; with --revision, docs/compose.md) to gateways.\n\n" + targetHelp,
		Example: "  cloud-sim deploy --tenant acme --selector site=berlin -f web.yaml\n" +
			"  cloud-sim deploy --tenant acme --all -f docker-compose.yml --revision 3 --env TAG=1.4",
		Args: NoArgs,
	}
	v.targetFlags(cmd)
	cmd.Flags().StringVarP(&v.file, "file", "f", "", "deployment spec, YAML or JSON (a protocol DeploymentSpec), or a Compose file; - for stdin")
	cmd.Flags().BoolVar(&v.skip, "skip-registry-check", false, "do not check the image and credential from the cloud first")
	v.composeFlags(cmd)
	return v.command(cmd, v.deploy)
}

// prefetchCmd is the protocol's prefetch verb, a verb of its own rather
// than a deploy flag: it has none of a deploy's effects (no desired state,
// no revision check, no status), and each protocol verb is one CLI verb.
func prefetchCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "prefetch TARGET -f spec.yaml [--skip-registry-check]",
		Short: "Download and verify a deployment spec's image on gateways, touching nothing",
		Long: "Have gateways download and verify the image of a deployment spec (the same file as deploy's) as a deploy\n" +
			"would, creating and changing nothing; a later deploy of the spec then only creates and starts.\n\n" + targetHelp,
		Example: "  cloud-sim prefetch --tenant acme --selector site=berlin -f web.yaml --wait 1h",
		Args:    NoArgs,
	}
	v.targetFlags(cmd)
	cmd.Flags().StringVarP(&v.file, "file", "f", "", "deployment spec, YAML or JSON (a protocol DeploymentSpec), or a Compose file; - for stdin")
	cmd.Flags().BoolVar(&v.skip, "skip-registry-check", false, "do not check the image and credential from the cloud first")
	v.composeFlags(cmd)
	return v.command(cmd, v.prefetch)
}

func lifecycleCmd(env Env, name string) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   name + " TARGET NAME",
		Short: map[string]string{"remove": "Remove", "start": "Start", "stop": "Stop", "restart": "Restart"}[name] + " a deployment on gateways",
		Long:  map[string]string{"remove": "Remove", "start": "Start", "stop": "Stop", "restart": "Restart"}[name] + " the deployment NAME on gateways.\n\n" + targetHelp,
	}
	v.targetFlags(cmd)
	if name == "remove" {
		cmd.Flags().BoolVar(&v.rmImage, "remove-image", false, "also remove the image")
	}
	return v.command(cmd, v.lifecycle(name))
}

func sendCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "send TARGET -f command.json",
		Short: "Send any protocol Command (protojson) to gateways",
		Long:  "Send any protocol Command, JSON (protojson) or YAML, to gateways.\n\n" + targetHelp,
		Args:  NoArgs,
	}
	v.targetFlags(cmd)
	cmd.Flags().StringVarP(&v.file, "file", "f", "", "protocol Command, JSON or YAML (- for stdin)")
	return v.command(cmd, v.send)
}

func batchCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "batch ID [--wait 5m]",
		Short: "Show a sent batch and its outcomes",
	}
	cmd.Flags().DurationVar(&v.wait, "wait", 0, "wait up to this long for every final reply")
	return v.command(cmd, v.batch)
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
	slices.SortFunc(list.Gateways, func(a, b *gatewayView) int { return inventory.CompareGateways(a.Tenant, a.ID, b.Tenant, b.ID) })
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

func gatewayState(g *gatewayView) string {
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

func engineName(g *gatewayView) string {
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

func deploymentsSummary(g *gatewayView) string {
	if len(g.Deployments) == 0 {
		return "-"
	}
	var parts []string
	for _, name := range slices.SortedFunc(maps.Keys(g.Deployments), inventory.CompareNatural) {
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
		return "", "", Usagef("gateway %q: write TENANT/ID, e.g. acme/gw-1", s)
	}
	return t, id, nil
}

func (v *verb) gateway(ctx context.Context) error {
	if len(v.args) != 1 {
		return Usagef("give one gateway as TENANT/ID")
	}
	t, id, err := splitGateway(v.args[0])
	if err != nil {
		return err
	}
	var g gatewayView
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
	if !g.Provisioned {
		fmt.Fprintf(tw, "identity\tnot provisioned in the cloud (deprovisioned, or known to an external broker only)\n")
	}
	fmt.Fprintf(tw, "labels\t%s\n", labels(g.Labels))
	fmt.Fprintf(tw, "groups\t%s\n", strings.Join(g.Groups, ","))
	if len(g.ReportedLabels) > 0 || len(g.ReportedGroups) > 0 {
		fmt.Fprintf(tw, "reported\tlabels %s groups %s (from its birth; not used to target)\n", or(labels(g.ReportedLabels), "-"), or(strings.Join(g.ReportedGroups, ","), "-"))
	}
	for _, r := range g.Registries {
		fmt.Fprintf(tw, "registry\t%s %s %s fingerprint %s %s\n", r.Registry, r.Kind, r.Username, r.Fingerprint, r.Warning)
	}
	tw.Flush()
	tw = v.table()
	fmt.Fprintln(tw, "\nDEPLOYMENT\tREVISION\tPHASE\tHEALTH\tIMAGE\tMESSAGE")
	for _, name := range slices.SortedFunc(maps.Keys(g.Deployments), inventory.CompareNatural) {
		d := g.Deployments[name]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", d.Name, d.Revision, d.Phase, or(d.Health, "-"), d.Image, d.Message)
		serviceRows(tw, d)
	}
	tw.Flush()
	return nil
}

func (v *verb) provision(ctx context.Context) error {
	if len(v.args) != 1 {
		return Usagef("give one gateway as TENANT/ID")
	}
	t, id, err := splitGateway(v.args[0])
	if err != nil {
		return err
	}
	var p api.Provisioned
	var raw []byte
	req := api.ProvisionRequest{Groups: v.groups}
	for _, l := range v.labels {
		k, val, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return Usagef("--label %q: write KEY=VALUE", l)
		}
		if req.Labels == nil {
			req.Labels = map[string]string{}
		}
		req.Labels[k] = val
	}
	if err := v.client.Do(ctx, "POST", "/v1/gateways/"+escape(t, id)+"/provision", req, &p, &raw); err != nil {
		return err
	}
	if v.output == "json" {
		v.printJSON(raw)
		return nil
	}
	fmt.Fprintf(v.env.Stdout, "username:  %s\nclient id: %s\npassword:  %s\n(shown once; give it to fleet-agent with --broker-username and --broker-password-file)\n", p.Username, p.ClientID, p.Password)
	for _, k := range p.CommandSigningKeys {
		fmt.Fprintf(v.env.Stdout, "command-signing key: %s %s\n", k.ID, k.PublicKey)
	}
	fmt.Fprintf(v.env.Stdout, "(give the keys to fleet-agent with --command-signing-keys: cloud-sim signing-keys list --tenant %s -o json > command-signing-keys.json)\n", t)
	return nil
}

// target builds the request target from the flags.
func (v *verb) target() (target, error) {
	var t target
	for _, g := range v.gateways {
		tenant, id, err := splitGateway(g)
		if err != nil {
			return t, err
		}
		if t.Tenant != "" && t.Tenant != tenant {
			return t, Usagef("every --gateway must be of one tenant")
		}
		t.Tenant = tenant
		t.Gateways = append(t.Gateways, id)
	}
	if len(t.Gateways) == 0 {
		if v.tenant == "" || (v.selector == "" && v.group == "" && !v.all) {
			return t, Usagef("say where: --gateway TENANT/ID, or --tenant T with --selector k=v, --group G or --all")
		}
		t.Tenant, t.Selector, t.Group, t.All = v.tenant, v.selector, v.group, v.all
	} else if v.tenant != "" && v.tenant != t.Tenant {
		return t, Usagef("--tenant differs from the --gateway tenant")
	}
	return t, nil
}

// readDoc reads a YAML or JSON file (- for stdin) as JSON.
func (v *verb) readDoc(path string) ([]byte, error) {
	doc, err := v.parseDoc(path)
	if err != nil {
		return nil, err
	}
	b, err := doc.JSON()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// parseDoc reads and parses a YAML or JSON file (- for stdin).
func (v *verb) parseDoc(path string) (*api.Doc, error) {
	if path == "" {
		return nil, Usagef("-f FILE is required")
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
	doc, err := api.ParseDoc(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return doc, nil
}

// readProto reads -f (YAML or JSON) into m, a protocol message.
func (v *verb) readProto(what string, m proto.Message) error {
	doc, err := v.parseDoc(v.file)
	if err != nil {
		return err
	}
	if err := doc.Decode(m); err != nil {
		return fmt.Errorf("%s is not %s: %w", v.file, what, err)
	}
	return nil
}

func (v *verb) deploy(ctx context.Context) error {
	t, err := v.target()
	if err != nil {
		return err
	}
	spec, err := v.readSpec()
	if err != nil {
		return err
	}
	return v.sendAndWait(ctx, t, &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: spec}}})
}

func (v *verb) prefetch(ctx context.Context) error {
	t, err := v.target()
	if err != nil {
		return err
	}
	spec, err := v.readSpec()
	if err != nil {
		return err
	}
	return v.sendAndWait(ctx, t, &fleetv1.Command{Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{Spec: spec}}})
}

func (v *verb) lifecycle(name string) func(context.Context) error {
	return func(ctx context.Context) error {
		t, err := v.target()
		if err != nil {
			return err
		}
		if len(v.args) != 1 {
			return Usagef("give the deployment name")
		}
		ref := &fleetv1.DeploymentRef{Name: v.args[0], RemoveImage: v.rmImage}
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
func (v *verb) sendAndWait(ctx context.Context, t target, cmd *fleetv1.Command) error {
	body, err := protojson.Marshal(cmd)
	if err != nil {
		return err
	}
	req := api.CommandRequest{Target: t, Command: body, SkipRegistryCheck: v.skip}
	if v.expires > 0 {
		req.ExpiresIn = v.expires.String()
	}
	var b batchView
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
	var b batchView
	var raw []byte
	p := progress{w: v.env.Stderr, interactive: v.env.Interactive}
	for {
		b = batchView{} // decoding into a used map would keep old counts
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

func (v *verb) batchTable(b *batchView) {
	tw := v.table()
	fmt.Fprintln(tw, "GATEWAY\tVERB\tSTATE\tCODE\tMESSAGE")
	cmds := slices.Clone(b.Commands)
	slices.SortStableFunc(cmds, func(a, b *command) int { return inventory.CompareGateways(a.Tenant, a.Gateway, b.Tenant, b.Gateway) })
	for _, c := range cmds {
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
	if len(v.args) != 1 {
		return Usagef("give the batch id")
	}
	return v.follow(ctx, v.args[0], v.wait)
}

// progress draws "[#####-----] 12/40 answered, 1 failed" on a terminal,
// and a line every 5 s elsewhere.
type progress struct {
	w           io.Writer
	interactive bool
	last        time.Time
	drawn       bool
}

func (p *progress) draw(b *batchView) {
	total := len(b.Commands)
	done := total - b.Counts[statePending] - b.Counts[stateAccepted]
	p.show(done, total, fmt.Sprintf("answered, %d failed, %d pending", b.Failed, b.Counts[statePending]), b.Done)
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
