package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
)

// Shell completion of gateways, tenants and rollout ids asks the API the
// flags point at; without an answer within a second it offers nothing.
const completeTimeout = time.Second

func (v *verb) completeGatewayFlags(cmd *cobra.Command) {
	if cmd.Flags().Lookup("gateway") != nil {
		cmd.RegisterFlagCompletionFunc("gateway", func(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
			return v.gatewayNames(cmd.Context(), prefix), cobra.ShellCompDirectiveNoFileComp
		})
	}
	if cmd.Flags().Lookup("tenant") != nil {
		cmd.RegisterFlagCompletionFunc("tenant", func(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
			var tenants []string
			for _, g := range v.listForCompletion(cmd.Context()) {
				if strings.HasPrefix(g.Tenant, prefix) && !slices.Contains(tenants, g.Tenant) {
					tenants = append(tenants, g.Tenant)
				}
			}
			slices.SortFunc(tenants, inventory.CompareNatural)
			return tenants, cobra.ShellCompDirectiveNoFileComp
		})
	}
}

// completeGatewayArg completes the TENANT/ID argument.
func (v *verb) completeGatewayArg(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return v.gatewayNames(cmd.Context(), prefix), cobra.ShellCompDirectiveNoFileComp
}

func (v *verb) gatewayNames(ctx context.Context, prefix string) []string {
	var names []string
	for _, g := range v.listForCompletion(ctx) {
		if n := g.Tenant + "/" + g.ID; strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	return names
}

func (v *verb) listForCompletion(ctx context.Context) []*gatewayView {
	ctx, cancel := context.WithTimeout(ctx, completeTimeout)
	defer cancel()
	var list api.GatewayList
	c, err := v.newClient()
	if err != nil || c.Do(ctx, "GET", "/v1/gateways", nil, &list, nil) != nil {
		return nil
	}
	slices.SortFunc(list.Gateways, func(a, b *gatewayView) int { return inventory.CompareGateways(a.Tenant, a.ID, b.Tenant, b.ID) })
	return list.Gateways
}

// completeRolloutArg completes a rollout id, the active ones.
func (v *verb) completeRolloutArg(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), completeTimeout)
	defer cancel()
	var out struct {
		Rollouts []rolloutView `json:"rollouts"`
	}
	c, err := v.newClient()
	if err != nil || c.Do(ctx, "GET", "/v1/rollouts", nil, &out, nil) != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var ids []string
	for _, r := range out.Rollouts {
		if strings.HasPrefix(r.ID, prefix) {
			ids = append(ids, r.ID+"\t"+r.Spec.Tenant+" "+deploymentName(r.Spec.Deployment)+" "+r.State)
		}
	}
	return ids, cobra.ShellCompDirectiveNoFileComp
}
