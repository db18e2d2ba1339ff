package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// logsVerb is `cloud-sim logs`: a deployment's output from one gateway,
// through GET …/logs.
type logsVerb struct {
	*verb
	service      string
	follow       bool
	tail         uint32
	since, until string
}

func logsCmd(env Env) *cobra.Command {
	v := &logsVerb{verb: &verb{env: env}}
	cmd := &cobra.Command{
		Use:   "logs TENANT/GATEWAY DEPLOYMENT [--service S] [-f] [--tail N] [--since 10m] [--until 5m]",
		Short: "Print a deployment's output on one gateway; -f follows it",
		Long: "Print a deployment's container output on one gateway, one line each as\n" +
			"`timestamp [service] stream text`. -f follows new lines until --until (10 minutes at most)\n" +
			"or Ctrl-C, which ends the follow on the gateway too. Lines the gateway's rate limit (or a\n" +
			"slow reader) dropped are reported on stderr. -o json prints each event as the API's JSON.",
		Example:           "  cloud-sim logs acme/gw-1 web --tail 50\n  cloud-sim logs acme/gw-1 shop --service db -f --since 10m",
		ValidArgsFunction: v.completeGatewayArg,
	}
	fs := cmd.Flags()
	fs.StringVar(&v.service, "service", "", "one service of an application (all, interleaved, when absent)")
	fs.BoolVarP(&v.follow, "follow", "f", false, "keep printing new lines until --until, 10 minutes at most, or Ctrl-C")
	fs.Uint32Var(&v.tail, "tail", 0, "the last N lines (0: the last 100, or all since --since)")
	fs.StringVar(&v.since, "since", "", "only lines since a duration ago (10m) or an RFC 3339 instant")
	fs.StringVar(&v.until, "until", "", "with -f: stop after a duration (5m) or at an RFC 3339 instant")
	return v.command(cmd, v.run)
}

func (v *logsVerb) run(ctx context.Context) error {
	if len(v.args) != 2 {
		return Usagef("give the gateway as TENANT/ID and the deployment's name, e.g. cloud-sim logs acme/gw-1 web")
	}
	t, id, err := splitGateway(v.args[0])
	if err != nil {
		return err
	}
	if v.until != "" && !v.follow {
		return Usagef("--until applies to -f only: add -f, or leave --until out")
	}
	q := url.Values{}
	for k, val := range map[string]string{"service": v.service, "since": v.since, "until": v.until} {
		if val != "" {
			q.Set(k, val)
		}
	}
	if v.tail > 0 {
		q.Set("tail", strconv.FormatUint(uint64(v.tail), 10))
	}
	if v.follow {
		q.Set("follow", "true")
	}
	path := "/v1/gateways/" + escape(t, id, "deployments", v.args[1], "logs")
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var end *api.LogEnd
	err = v.client.Events(ctx, path, func(name string, data []byte) error {
		if name == "end" {
			end = new(api.LogEnd)
			if err := json.Unmarshal(data, end); err != nil {
				return fmt.Errorf("end event %s: %w", data, err)
			}
		}
		if v.output == "json" {
			fmt.Fprintf(v.env.Stdout, "{\"event\":%q,\"data\":%s}\n", name, data)
			return nil
		}
		return v.print(name, data)
	})
	switch {
	case errors.Is(err, context.Canceled) && v.follow:
		return nil // Ctrl-C ends a follow; the server cancels it on the gateway
	case err != nil:
		return err
	case end == nil:
		return errors.New("the stream ended without its end: the API went away; run it again")
	}
	return v.ended(end)
}

// print writes a line to stdout, a drop notice to stderr.
func (v *logsVerb) print(name string, data []byte) error {
	switch name {
	case "line":
		var l api.LogLine
		if err := json.Unmarshal(data, &l); err != nil {
			return fmt.Errorf("line event %s: %w", data, err)
		}
		fmt.Fprintf(v.env.Stdout, "%s [%s] %s %s\n", l.At.Format(time.RFC3339Nano), l.Service, l.Stream, l.Text)
	case "dropped":
		var d api.LogDropped
		if err := json.Unmarshal(data, &d); err != nil {
			return fmt.Errorf("dropped event %s: %w", data, err)
		}
		fmt.Fprintf(v.env.Stderr, "cloud-sim logs: %s\n", dropNotice(d))
	}
	return nil
}

func dropNotice(d api.LogDropped) string {
	switch {
	case d.By == "gateway":
		return fmt.Sprintf("%d lines (%d bytes) dropped here by the gateway's rate limit", d.Lines, d.Bytes)
	case d.Chunks > 0 && d.Lines == 0:
		return fmt.Sprintf("%d chunks of lines lost on the way here", d.Chunks)
	}
	return fmt.Sprintf("%d lines (%d bytes) dropped here: this client read too slowly", d.Lines, d.Bytes)
}

// ended says how the stream ended, on stderr unless it simply ended; an
// end in error fails the verb.
func (v *logsVerb) ended(e *api.LogEnd) error {
	why := e.Message
	if e.Code != "" {
		why = e.Code + ": " + e.Message
	}
	switch e.Reason {
	case "COMPLETE", "UNTIL", "CANCELED", "SUCCEEDED":
		return nil
	case "CONTAINER_GONE":
		fmt.Fprintf(v.env.Stderr, "cloud-sim logs: the container was removed or replaced (a new revision); run it again for the new one\n")
		return nil
	case "TIMEOUT":
		return fmt.Errorf("logs command %s: %s", e.Command, why)
	}
	return fmt.Errorf("logs command %s ended %s: %s", e.Command, e.Reason, why)
}
