package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
)

// rolloutCmd is `cloud-sim rollout create|list|status|pause|resume|cancel`.
func rolloutCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "rollout create|list|status|pause|resume|cancel",
		Short:                 "Roll a deployment out to many gateways in batches",
		Args:                  cobra.ArbitraryArgs,
		DisableFlagsInUseLine: true,
		RunE:                  subverb("create -f FILE, list, status ID [--watch], pause ID, resume ID or cancel ID"),
	}
	cmd.AddCommand(rolloutCreateCmd(env), rolloutListCmd(env), rolloutStatusCmd(env))
	for _, action := range []string{"pause", "resume", "cancel"} {
		cmd.AddCommand(rolloutActionCmd(env, action))
	}
	return cmd
}

func rolloutCreateCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:   "create -f rollout.yaml [--watch]",
		Short: "Start a rollout",
		Args:  NoArgs,
	}
	cmd.Flags().StringVarP(&v.file, "file", "f", "", "rollout spec, YAML or JSON (- for stdin)")
	cmd.Flags().BoolVar(&v.watch, "watch", false, "follow until the rollout ends")
	cmd.Flags().StringVar(&v.compose.file, "compose", "", "a Compose `FILE` translated into the rollout's deployment (which then gives only name and revision)")
	v.composeFlags(cmd)
	return v.command(cmd, v.rolloutCreate)
}

func rolloutListCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	return v.command(&cobra.Command{Use: "list", Short: "List rollouts", Args: NoArgs}, v.rolloutList)
}

func rolloutStatusCmd(env Env) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:               "status ID [--watch]",
		Short:             "Show a rollout; exit 1 when it failed, aborted or was canceled",
		ValidArgsFunction: v.completeRolloutArg,
	}
	cmd.Flags().BoolVar(&v.watch, "watch", false, "follow until the rollout ends")
	return v.command(cmd, func(ctx context.Context) error {
		if len(v.args) != 1 {
			return Usagef("give the rollout id")
		}
		return v.rolloutStatus(ctx, v.args[0])
	})
}

func rolloutActionCmd(env Env, action string) *cobra.Command {
	v := &verb{env: env}
	cmd := &cobra.Command{
		Use:               action + " ID",
		Short:             map[string]string{"pause": "Pause", "resume": "Resume", "cancel": "Cancel"}[action] + " a rollout",
		ValidArgsFunction: v.completeRolloutArg,
	}
	return v.command(cmd, func(ctx context.Context) error {
		if len(v.args) != 1 {
			return Usagef("give the rollout id")
		}
		var rv rolloutView
		var raw []byte
		if err := v.client.Do(ctx, "POST", "/v1/rollouts/"+escape(v.args[0])+"/"+action, nil, &rv, &raw); err != nil {
			return err
		}
		if v.output == "json" {
			v.printJSON(raw)
			return nil
		}
		fmt.Fprintf(v.env.Stdout, "rollout %s: %s\n", rv.ID, rv.State)
		return nil
	})
}

func (v *verb) rolloutCreate(ctx context.Context) error {
	raw, err := v.readDoc(v.file)
	if err != nil {
		return err
	}
	spec, err := api.ParseRolloutSpec(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", v.file, err)
	}
	if v.compose.file != "" {
		if err := v.composeRollout(&spec); err != nil {
			return err
		}
	} else if v.compose.given() {
		return Usagef("--revision, --name, --env and --env-file go with --compose FILE")
	}
	var rv rolloutView
	var body []byte
	if err := v.client.Do(ctx, "POST", "/v1/rollouts", spec, &rv, &body); err != nil {
		return err
	}
	for _, w := range rv.Warnings {
		fmt.Fprintln(v.env.Stderr, "warning:", w)
	}
	if !v.watch {
		if v.output == "json" {
			v.printJSON(body)
		} else {
			fmt.Fprintf(v.env.Stdout, "rollout %s started: %d gateways\n", rv.ID, rv.Total)
		}
		return nil
	}
	return v.rolloutStatus(ctx, rv.ID)
}

func (v *verb) rolloutList(ctx context.Context) error {
	var out struct {
		Rollouts []rolloutView `json:"rollouts"`
	}
	if printed, err := v.fetch(ctx, "/v1/rollouts", &out); printed || err != nil {
		return err
	}
	slices.SortStableFunc(out.Rollouts, func(a, b rolloutView) int {
		if c := inventory.CompareNatural(a.Spec.Tenant, b.Spec.Tenant); c != 0 {
			return c
		}
		return a.CreatedAt.Compare(b.CreatedAt)
	})
	tw := v.table()
	fmt.Fprintln(tw, "ROLLOUT\tTENANT\tDEPLOYMENT\tSTATE\tPHASE\tGATEWAYS\tSUCCEEDED\tFAILED\tCREATED")
	for _, r := range out.Rollouts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%.0f%%\t%.0f%%\t%s\n", r.ID, r.Spec.Tenant, deploymentName(r.Spec.Deployment),
			r.State, r.Phase, r.Total, r.SucceededPct, r.FailedPct, ago(r.CreatedAt))
	}
	tw.Flush()
	return nil
}

func deploymentName(raw json.RawMessage) string {
	var d struct {
		Name     string `json:"name"`
		Revision any    `json:"revision"`
	}
	_ = json.Unmarshal(raw, &d)
	return fmt.Sprintf("%s@%v", d.Name, d.Revision)
}

// rolloutStatus prints a rollout (following it with --watch) and sets the
// exit code: 1 when it failed, aborted or was canceled.
func (v *verb) rolloutStatus(ctx context.Context, id string) error {
	p := progress{w: v.env.Stderr, interactive: v.env.Interactive}
	var rv rolloutView
	var body []byte
	for {
		rv = rolloutView{}
		if err := v.client.Do(ctx, "GET", "/v1/rollouts/"+escape(id), nil, &rv, &body); err != nil {
			return err
		}
		if !v.watch || !rv.Active {
			break
		}
		p.drawRollout(&rv)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	p.end()
	if v.output == "json" {
		v.printJSON(body)
	} else {
		tw := v.table()
		fmt.Fprintf(tw, "rollout\t%s (%s)\n", rv.ID, deploymentName(rv.Spec.Deployment))
		fmt.Fprintf(tw, "state\t%s, phase %s, batch %d of %d gateways each\n", rv.State, rv.Phase, rv.Batch, rv.BatchSize)
		if rv.Reason != "" {
			fmt.Fprintf(tw, "reason\t%s\n", rv.Reason)
		}
		var counts []string
		for _, k := range slices.Sorted(maps.Keys(rv.Counts)) {
			counts = append(counts, fmt.Sprintf("%d %s", rv.Counts[k], strings.ToLower(k)))
		}
		fmt.Fprintf(tw, "gateways\t%d: %s\n", rv.Total, strings.Join(counts, ", "))
		if rv.PrefetchCounts != nil {
			fmt.Fprintf(tw, "prefetch\t%s\n", countWords(rv.PrefetchCounts))
		}
		fmt.Fprintf(tw, "progress\t%.1f%% succeeded, %.1f%% failed, %.0f/min, eta %s\n", rv.SucceededPct, rv.FailedPct, rv.CurrentRate, or(rv.ETA, "-"))
		tw.Flush()
		if len(rv.Failing) > 0 {
			tw = v.table()
			fmt.Fprintln(tw, "\nFAILING GATEWAY\tSTATE\tCODE\tMESSAGE")
			slices.SortFunc(rv.Failing, func(a, b rolloutGateway) int { return inventory.CompareNatural(a.Gateway, b.Gateway) })
			for _, g := range rv.Failing {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Gateway, g.State, or(g.Code, "-"), oneLine(g.Message))
			}
			tw.Flush()
		}
	}
	switch rv.State {
	case rolloutFailed, rolloutAborted, rolloutCancel:
		v.exit = ExitFailed
	}
	return nil
}

func (p *progress) drawRollout(r *rolloutView) {
	if r.Phase == phasePrefetch {
		pc := r.PrefetchCounts
		p.show(r.Total-pc[prefetchQueued]-pc[prefetchInProgress], r.Total, fmt.Sprintf("%s %s: %s", r.State, r.Phase, countWords(pc)), false)
		return
	}
	done := r.Total - r.Counts[gwQueued] - r.Counts[gwInProgress]
	p.show(done, r.Total, fmt.Sprintf("%s %s: %d succeeded, %d failed, %d in progress", r.State, r.Phase,
		r.Counts[gwSucceeded], r.Counts[gwFailed]+r.Counts[gwRejected]+r.Counts[gwTimedOut],
		r.Counts[gwInProgress]), false)
}

// countWords is "2 failed, 5 succeeded": counts by state, sorted.
func countWords(counts map[string]int) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		out = append(out, fmt.Sprintf("%d %s", counts[k], strings.ToLower(k)))
	}
	return strings.Join(out, ", ")
}
