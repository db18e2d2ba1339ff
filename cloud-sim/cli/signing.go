package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

// signingKeysCmd is `cloud-sim signing-keys list|add|rotate|retire`.
func signingKeysCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "signing-keys list|add|rotate|retire",
		Short: "Manage a tenant's command-signing keys",
		Long: `Manage a tenant's command-signing keys. The controller signs every command with
the tenant's signing key; gateways given the tenant's keys (--command-signing-keys)
run no other. To rotate without refused commands: add (a staged key, valid but
not signing), give gateways the new list (list -o json > keys.json), rotate (the
staged key signs, the old one stays valid), then retire the old key.`,
		Args:                  cobra.ArbitraryArgs,
		DisableFlagsInUseLine: true,
		RunE:                  subverb("list, add, rotate or retire"),
	}
	for _, s := range []struct{ use, short, method, path string }{
		{"list --tenant T", "List a tenant's command-signing keys (-o json is a --command-signing-keys file)", "GET", ""},
		{"add --tenant T", "Stage a new command-signing key: valid, not signing until rotate", "POST", ""},
		{"rotate --tenant T", "Make the staged (or a new) key the signer; the old one stays valid", "POST", "/rotate"},
		{"retire --tenant T KEY-ID", "Retire a command-signing key that is not the signer", "DELETE", "/"},
	} {
		v := &verb{env: env}
		sub := &cobra.Command{Use: s.use, Short: s.short, Args: NoArgs}
		if s.method == "DELETE" {
			sub.Args = cobra.ExactArgs(1)
		}
		sub.Flags().StringVar(&v.tenant, "tenant", "", "tenant")
		v.completeGatewayFlags(sub)
		cmd.AddCommand(v.command(sub, func(ctx context.Context) error { return v.signingKeys(ctx, s.method, s.path) }))
	}
	return cmd
}

func (v *verb) signingKeys(ctx context.Context, method, suffix string) error {
	if v.tenant == "" {
		return Usagef("--tenant is required")
	}
	path := "/v1/tenants/" + escape(v.tenant) + "/command-signing-keys" + suffix
	if method == "DELETE" {
		path += escape(v.args[0])
	}
	var out struct {
		Keys []struct {
			ID        string    `json:"id"`
			PublicKey string    `json:"publicKey"`
			Signer    bool      `json:"signer"`
			CreatedAt time.Time `json:"createdAt"`
		} `json:"keys"`
	}
	var raw []byte
	if err := v.client.Do(ctx, method, path, nil, &out, &raw); err != nil {
		return err
	}
	if v.output == "json" {
		v.printJSON(raw)
		return nil
	}
	tw := v.table()
	fmt.Fprintln(tw, "ID\tSIGNER\tCREATED\tPUBLIC KEY")
	for _, k := range out.Keys {
		signer := "-"
		if k.Signer {
			signer = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, signer, k.CreatedAt.Format(time.RFC3339), k.PublicKey)
	}
	return tw.Flush()
}
