package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// The verbs that change a gateway's identity in the cloud: deprovision,
// label and group (provision is in verbs.go).

func deprovisionCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:               "deprovision TENANT/ID",
		Short:             "Delete a gateway's MQTT identity and disconnect it at once",
		Long:              "Delete a gateway's MQTT identity: it can no longer log in, a live session on the embedded broker is\ndisconnected at once and commands queued for it are dropped. Its inventory record is kept, offline.\nWith an external broker, also remove the user from the broker (Mosquitto: its password file).",
		ValidArgsFunction: v.completeGatewayArg,
	}
	return v.command(cmd, v.deprovision)
}

func (v *verb) deprovision(ctx context.Context) error {
	t, id, err := v.oneGateway()
	if err != nil {
		return err
	}
	var d api.Deprovisioned
	var raw []byte
	if err := v.client.Do(ctx, "POST", "/v1/gateways/"+escape(t, id)+"/deprovision", nil, &d, &raw); err != nil {
		return err
	}
	if v.output == "json" {
		v.printJSON(raw)
		return nil
	}
	state := "was not connected"
	if d.Disconnected {
		state = "disconnected"
	}
	fmt.Fprintf(v.env.Stdout, "%s/%s deprovisioned (%s); its inventory record is %s\n", d.Tenant, d.ID, state, d.Inventory)
	return nil
}

func labelCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "label TENANT/ID [KEY=VALUE | KEY-]...",
		Short: "Set or remove the labels the cloud targets a gateway by",
		Long: "Set (KEY=VALUE) or remove (KEY-) labels of a provisioned gateway; without any, show them.\n" +
			"Commands, rollouts and credentials select gateways by these labels, never by the labels a gateway\nannounces in its birth (shown as reportedLabels).",
		Example:           "  cloud-sim label acme/gw-1 site=berlin tier=canary\n  cloud-sim label acme/gw-1 tier-",
		ValidArgsFunction: v.completeGatewayArg,
	}
	return v.command(cmd, v.label)
}

func (v *verb) label(ctx context.Context) error {
	if len(v.args) < 1 {
		return Usagef("give one gateway as TENANT/ID, then KEY=VALUE or KEY- for each label")
	}
	t, id, err := splitGateway(v.args[0])
	if err != nil {
		return err
	}
	patch := map[string]*string{}
	for _, a := range v.args[1:] {
		if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
			patch[k] = nil
			continue
		}
		k, val, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return Usagef("label %q: write KEY=VALUE to set one, KEY- to remove one", a)
		}
		patch[k] = &val
	}
	method, body := "PATCH", any(api.LabelsRequest{Labels: patch})
	if len(patch) == 0 {
		method, body = "GET", nil
	}
	return v.showIdentity(ctx, method, "/v1/gateways/"+escape(t, id)+suffix(method, "/labels"), body)
}

func groupCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "group TENANT/ID [GROUP]... [--none]",
		Short: "Set the groups of a provisioned gateway",
		Long: "Set the groups of a provisioned gateway (replacing them; --none for none); without any, show them.\n" +
			"Groups give access to their command topics and are how --group and rollout groups target gateways;\n" +
			"a connected gateway whose groups change is disconnected so that it logs in under them.",
		Example:           "  cloud-sim group acme/gw-1 berlin prod",
		ValidArgsFunction: v.completeGatewayArg,
	}
	cmd.Flags().BoolVar(&v.all, "none", false, "remove every group")
	return v.command(cmd, v.assignGroups)
}

func (v *verb) assignGroups(ctx context.Context) error {
	if len(v.args) < 1 {
		return Usagef("give one gateway as TENANT/ID, then its groups")
	}
	t, id, err := splitGateway(v.args[0])
	if err != nil {
		return err
	}
	groups := slices.Clone(v.args[1:])
	if v.all && len(groups) > 0 {
		return Usagef("--none with groups: give one or the other")
	}
	method, body := "PUT", any(api.GroupsRequest{Groups: groups})
	if len(groups) == 0 && !v.all {
		method, body = "GET", nil
	} else if groups == nil {
		body = api.GroupsRequest{Groups: []string{}}
	}
	return v.showIdentity(ctx, method, "/v1/gateways/"+escape(t, id)+suffix(method, "/groups"), body)
}

// suffix is the path of a change, or /identity to read.
func suffix(method, change string) string {
	if method == "GET" {
		return "/identity"
	}
	return change
}

func (v *verb) showIdentity(ctx context.Context, method, path string, body any) error {
	var d api.Identity
	var raw []byte
	if err := v.client.Do(ctx, method, path, body, &d, &raw); err != nil {
		return err
	}
	if v.output == "json" {
		v.printJSON(raw)
		return nil
	}
	tw := v.table()
	fmt.Fprintf(tw, "gateway\t%s/%s\n", d.Tenant, d.ID)
	fmt.Fprintf(tw, "labels\t%s\n", labels(d.Labels))
	fmt.Fprintf(tw, "groups\t%s\n", strings.Join(d.Groups, ","))
	return tw.Flush()
}

func (v *verb) oneGateway() (string, string, error) {
	if len(v.args) != 1 {
		return "", "", Usagef("give one gateway as TENANT/ID")
	}
	return splitGateway(v.args[0])
}
