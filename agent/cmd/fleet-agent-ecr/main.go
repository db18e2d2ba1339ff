// Command fleet-agent-ecr gets an ECR token for fleet-agent with the AWS
// SDK, so that the agent itself does not link the SDK (see agent/ecrexec).
// It reads the ecr credential and the region as JSON on standard input and
// writes the token, or the error, as JSON on standard output.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fleet-agent/fleet/agent/ecrexec"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := ecrexec.Serve(ctx, os.Stdin, os.Stdout, awsecr.Fetch, time.Now)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet-agent-ecr: %v\n", err)
		os.Exit(1)
	}
}
