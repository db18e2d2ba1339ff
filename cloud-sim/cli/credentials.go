package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// credentialsCmd is `cloud-sim credentials set|list|delete`.
func credentialsCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "credentials set|list|delete",
		Short:                 "Manage a tenant's registry credentials",
		Args:                  cobra.ArbitraryArgs,
		DisableFlagsInUseLine: true,
		RunE:                  subverb("set, list or delete"),
	}
	cmd.AddCommand(credSetCmd(env), credListCmd(env), credDeleteCmd(env))
	return cmd
}

// subverb is the RunE of a verb that has sub-verbs: without one, or with
// an unknown one, it is a usage error.
func subverb(say string) func(*cobra.Command, []string) error {
	return func(_ *cobra.Command, args []string) error {
		if len(args) == 0 {
			return Usagef("say %s", say)
		}
		return Usagef("unknown %q; say %s", args[0], say)
	}
}

func credSetCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "set --tenant T --registry R (--username U --password-stdin | --ecr-region R --ecr-access-key-id K --ecr-secret-stdin [--issue-tokens]) [--ca-file F] [--require-tls | --insecure] [--check-image IMAGE] [--push TARGET]",
		Short: "Store a registry credential of a tenant (and push it to gateways)",
		Long: `Store a registry credential of a tenant, encrypted at rest: basic (username and
a password or token read from stdin), ECR (AWS keys; with --issue-tokens the
gateways get 12-hour tokens, never the keys) or, with neither, anonymous.
With --push it is also sent, sealed, to the target gateways now.`,
		Example: "  echo \"$TOKEN\" | cloud-sim credentials set --tenant acme --registry ghcr.io/acme --username bot --password-stdin",
		Args:    NoArgs,
	}
	fs := cmd.Flags()
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
	fs.BoolVar(&v.insecure, "insecure", false, "plain HTTP or unverified TLS: honoured only by gateways whose --allow-insecure-registry lists the registry (pull mode agent)")
	fs.StringVar(&v.checkImage, "check-image", "", "check this image with the credential first; refuse the credential if the registry does")
	fs.BoolVar(&v.push, "push", false, "also send it, sealed, to the target gateways now")
	fs.StringArrayVar(&v.gateways, "gateway", nil, "with --push: target gateway `TENANT/ID` (repeatable)")
	fs.StringVar(&v.selector, "selector", "", "with --push: label selector")
	fs.StringVar(&v.group, "group", "", "with --push: group")
	fs.BoolVar(&v.all, "all", false, "with --push: every gateway of --tenant")
	fs.DurationVar(&v.wait, "wait", 5*time.Minute, "with --push: how long to wait for replies")
	v.completeGatewayFlags(cmd)
	return v.command(cmd, v.credSet)
}

func credListCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{Use: "list --tenant T", Short: "List a tenant's registry credentials (never their secrets)", Args: NoArgs}
	cmd.Flags().StringVar(&v.tenant, "tenant", "", "tenant")
	v.completeGatewayFlags(cmd)
	return v.command(cmd, v.credList)
}

func credDeleteCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{Use: "delete --tenant T --registry R", Short: "Delete a tenant's registry credential", Args: NoArgs}
	cmd.Flags().StringVar(&v.tenant, "tenant", "", "tenant")
	cmd.Flags().StringVar(&v.registry, "registry", "", "registry scope to delete")
	v.completeGatewayFlags(cmd)
	return v.command(cmd, v.credDelete)
}

func checkRegistryCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "check-registry --tenant T IMAGE",
		Short: "Check an image from the cloud with the tenant's credential",
	}
	cmd.Flags().StringVar(&v.tenant, "tenant", "", "tenant whose credential to use")
	v.completeGatewayFlags(cmd)
	return v.command(cmd, v.checkRegistry)
}

func (v *verb) credSet(ctx context.Context) error {
	if v.tenant == "" || v.registry == "" {
		return Usagef("--tenant and --registry are required")
	}
	cr := &fleetv1.Credential{Registry: v.registry, RequireTls: v.requireTLS, Insecure: v.insecure}
	readSecret := func() (string, error) {
		b, err := io.ReadAll(v.env.Stdin)
		return strings.TrimRight(string(b), "\r\n"), err
	}
	switch {
	case v.username != "":
		if !v.passwordStdin {
			return Usagef("--username needs --password-stdin: passwords are never taken on the command line")
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
	var view credentialView
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
	var b batchView
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
		return Usagef("--tenant is required")
	}
	var out struct {
		Credentials []credentialView `json:"credentials"`
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
		return Usagef("--tenant and --registry are required")
	}
	if err := v.client.Do(ctx, "DELETE", "/v1/tenants/"+escape(v.tenant)+"/credentials/"+v.registry, nil, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(v.env.Stdout, "credential for %s deleted (gateways keep theirs until sent delete-credentials)\n", v.registry)
	return nil
}

func (v *verb) checkRegistry(ctx context.Context) error {
	if v.tenant == "" || len(v.args) != 1 {
		return Usagef("give --tenant T and one IMAGE")
	}
	var res checkResult
	var raw []byte
	if err := v.client.Do(ctx, "POST", "/v1/tenants/"+escape(v.tenant)+"/check-registry", map[string]string{"image": v.args[0]}, &res, &raw); err != nil {
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
