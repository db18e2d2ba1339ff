package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// rollout runs `cloud-sim rollout create|list|status|pause|resume|cancel`.
func (v *verb) rollout(ctx context.Context) error {
	args := v.fs.Args()
	if len(args) == 0 {
		return usageError("say create -f FILE, list, status ID [--watch], pause ID, resume ID or cancel ID")
	}
	switch args[0] {
	case "create":
		raw, err := v.readDoc(v.file)
		if err != nil {
			return err
		}
		var spec api.RolloutSpec
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			return fmt.Errorf("%s is not a rollout spec: %w", v.file, err)
		}
		var rv api.RolloutView
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
	case "list":
		var out struct {
			Rollouts []api.RolloutView `json:"rollouts"`
		}
		if printed, err := v.fetch(ctx, "/v1/rollouts", &out); printed || err != nil {
			return err
		}
		tw := v.table()
		fmt.Fprintln(tw, "ROLLOUT\tTENANT\tDEPLOYMENT\tSTATE\tPHASE\tGATEWAYS\tSUCCEEDED\tFAILED\tCREATED")
		for _, r := range out.Rollouts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%.0f%%\t%.0f%%\t%s\n", r.ID, r.Spec.Tenant, deploymentName(r.Spec.Deployment),
				r.State, r.Phase, r.Total, r.SucceededPct, r.FailedPct, ago(r.CreatedAt))
		}
		tw.Flush()
		return nil
	case "status":
		if len(args) != 2 {
			return usageError("give the rollout id")
		}
		return v.rolloutStatus(ctx, args[1])
	case "pause", "resume", "cancel":
		if len(args) != 2 {
			return usageError("give the rollout id")
		}
		var rv api.RolloutView
		if err := v.client.Do(ctx, "POST", "/v1/rollouts/"+escape(args[1])+"/"+args[0], nil, &rv, nil); err != nil {
			return err
		}
		fmt.Fprintf(v.env.Stdout, "rollout %s: %s\n", rv.ID, rv.State)
		return nil
	}
	return usageError(fmt.Sprintf("unknown rollout verb %q", args[0]))
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
	var rv api.RolloutView
	var body []byte
	for {
		rv = api.RolloutView{}
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
		fmt.Fprintf(tw, "progress\t%.1f%% succeeded, %.1f%% failed, %.0f/min, eta %s\n", rv.SucceededPct, rv.FailedPct, rv.CurrentRate, or(rv.ETA, "-"))
		tw.Flush()
		if len(rv.Failing) > 0 {
			tw = v.table()
			fmt.Fprintln(tw, "\nFAILING GATEWAY\tSTATE\tCODE\tMESSAGE")
			for _, g := range rv.Failing {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Gateway, g.State, or(g.Code, "-"), oneLine(g.Message))
			}
			tw.Flush()
		}
	}
	switch rv.State {
	case api.RolloutFailed, api.RolloutAborted, api.RolloutCanceled:
		v.exit = ExitFailed
	}
	return nil
}

func (p *progress) drawRollout(r *api.RolloutView) {
	done := r.Total - r.Counts[api.GwQueued] - r.Counts[api.GwInProgress]
	p.show(done, r.Total, fmt.Sprintf("%s %s: %d succeeded, %d failed, %d in progress", r.State, r.Phase,
		r.Counts[api.GwSucceeded], r.Counts[api.GwFailed]+r.Counts[api.GwRejected]+r.Counts[api.GwTimedOut],
		r.Counts[api.GwInProgress]), false)
}
