// Package cli is cloud-sim's command line, on cobra: the root command,
// the client verbs that talk to a running `cloud-sim serve` through its
// HTTP API (tables for humans, the API's JSON with -o json for scripts),
// and the mapping of errors onto exit codes.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // an error, or a command failed on some gateway
	ExitUsage  = 2 // a usage error: unknown verb or flag, missing or bad argument
)

// Env is what a verb reads and writes.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Interactive: Stderr is a terminal, so progress bars redraw in place.
	Interactive bool
	Getenv      func(string) string
}

const rootLong = `cloud-sim is the cloud side of Fleet Agent.

The client verbs talk to a running serve: --api URL or CLOUD_SIM_API
(default http://127.0.0.1:8080). The API token: --api-token-file, else
CLOUD_SIM_TOKEN, else the api-token file serve made in its --data
directory (default cloud-sim-data, as serve's). -o json prints the API's
JSON. Verbs that send a command wait for every
final reply (--wait) and exit 1 if any gateway failed; a usage error
exits 2.`

const serverGroup, clientGroup = "server", "client"

// New returns the cloud-sim command with the client verbs, and server
// (serve, fleet, demo, …) listed in a group of their own. Run it with
// Execute.
func New(env Env, server ...*cobra.Command) *cobra.Command {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	root := &cobra.Command{
		Use:   "cloud-sim",
		Short: "The cloud side of Fleet Agent",
		Long:  rootLong,
		// Without a verb: the usage, as a usage error.
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprint(cmd.ErrOrStderr(), cmd.UsageString())
			return exitCode(ExitUsage)
		},
		SilenceErrors: true, // Execute prints them, in one format
		SilenceUsage:  true,
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	if len(server) > 0 {
		root.AddGroup(&cobra.Group{ID: serverGroup, Title: "Run the cloud side:"})
		for _, c := range server {
			c.GroupID = serverGroup
			root.AddCommand(c)
		}
	}
	root.AddGroup(&cobra.Group{ID: clientGroup, Title: "Client verbs (talk to a running serve):"})
	for _, c := range []*cobra.Command{
		gatewaysCmd(env), gatewayCmd(env), provisionCmd(env), deprovisionCmd(env), labelCmd(env), groupCmd(env),
		deployCmd(env), prefetchCmd(env), lifecycleCmd(env, "remove"), lifecycleCmd(env, "start"), lifecycleCmd(env, "stop"), lifecycleCmd(env, "restart"),
		sendCmd(env), credentialsCmd(env), checkRegistryCmd(env), batchCmd(env), rolloutCmd(env), signingKeysCmd(env), logsCmd(env),
	} {
		c.GroupID = clientGroup
		root.AddCommand(c)
	}
	markFailures(root)
	return root
}

// Run runs the client verbs with args (args[0] is the verb) and returns
// the exit code.
func Run(ctx context.Context, env Env, args []string) int {
	return Execute(ctx, New(env), args)
}

// Execute runs root with args, prints an error as "cloud-sim VERB: error"
// and returns the exit code: ExitFailed when a verb failed, ExitUsage for
// a usage error, whether cobra (unknown verb or flag, bad flag value) or
// a verb (missing argument) found it.
func Execute(ctx context.Context, root *cobra.Command, args []string) int {
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	var code exitCode
	var failed *failure
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &failed):
		fmt.Fprintf(root.ErrOrStderr(), "%s: %v\n", cmd.CommandPath(), failed.err)
		return ExitFailed
	}
	fmt.Fprintf(root.ErrOrStderr(), "%s: %v\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, cmd.CommandPath())
	return ExitUsage
}

// markFailures wraps every RunE in the tree so that an error it returns
// is told apart from cobra's own (usage) errors: a verb's error is a
// failure unless it is a usage error.
func markFailures(c *cobra.Command) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			var usage usageError
			var code exitCode
			if err == nil || errors.As(err, &usage) || errors.As(err, &code) {
				return err
			}
			return &failure{err}
		}
	}
	for _, sub := range c.Commands() {
		markFailures(sub)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// Usagef is a usage error: the command exits with ExitUsage.
func Usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// exitCode ends the command with its code and prints nothing more: the
// verb has said why (e.g. a table with the failed gateways).
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// failure is an error of a verb's RunE.
type failure struct{ err error }

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }
