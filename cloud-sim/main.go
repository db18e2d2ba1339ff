// Command cloud-sim is the cloud side of Fleet Agent: an embedded MQTT
// broker and, in later releases, registries, a fleet controller and
// simulated gateways.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/demo"
)

const usage = `cloud-sim is the cloud side of Fleet Agent.

Usage:
  cloud-sim broker [--listen 127.0.0.1:1883] [--store FILE]   run the embedded MQTT v5 broker
  cloud-sim demo                                              run the end-to-end demo
`

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	switch args[0] {
	case "broker":
		fs := flag.NewFlagSet("cloud-sim broker", flag.ContinueOnError)
		listen := fs.String("listen", "127.0.0.1:1883", "address to listen on")
		store := fs.String("store", "", "bbolt file persisting sessions and queued messages (none: in memory)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		b, err := broker.Start(broker.Config{Addr: *listen, StorePath: *store, Logger: log})
		if err != nil {
			fmt.Fprintln(os.Stderr, "cloud-sim:", err)
			return 1
		}
		fmt.Printf("broker listening on %s\n", b.URL())
		<-ctx.Done()
		b.Close()
		return 0
	case "demo":
		if err := demo.Run(ctx, os.Stdout, log); err != nil {
			fmt.Fprintln(os.Stderr, "demo failed:", err)
			return 1
		}
		return 0
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "cloud-sim: unknown command %q\n\n%s", args[0], usage)
	return 2
}
