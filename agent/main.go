// Command fleet-agent runs on an edge gateway and executes the cloud's
// commands over MQTT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/fleet-agent/fleet/agent/config"
	"github.com/fleet-agent/fleet/agent/gateway"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	cfg, err := config.Load(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet-agent: invalid configuration:\n%v\n", err)
		return 2
	}
	logger := cfg.Logger(os.Stderr)
	docker, err := cfg.Docker(logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet-agent: invalid configuration:\n%v\n", err)
		return 2
	}
	gcfg, err := cfg.GatewayConfig(version, logger, docker)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet-agent: invalid configuration:\n%v\n", err)
		return 2
	}
	gw, err := gateway.New(gcfg)
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The first birth already carries the engine's facts; births read them
	// from this cache, which follows the engine's event stream and reconnects.
	facts := docker.Facts()
	facts.Update(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { facts.Run(ctx) })
	err = gw.Run(ctx)
	stop()
	wg.Wait()
	if err != nil {
		logger.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}
