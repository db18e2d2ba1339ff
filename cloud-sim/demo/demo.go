// Package demo runs the end-to-end demonstration that `make demo` shows a
// newcomer: an embedded broker, a real agent, a console that reads the
// agent's birth, sends it a command and prints the reply.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/gateway"
	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/console"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Run runs the demo, printing to out. It returns an error if any step fails.
func Run(ctx context.Context, out io.Writer, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	step := func(format string, args ...any) { fmt.Fprintf(out, "\n==> "+format+"\n", args...) }

	b, err := broker.Start(broker.Config{})
	if err != nil {
		return err
	}
	defer b.Close()
	step("embedded MQTT v5 broker listening on %s", b.URL())

	u, _ := url.Parse(b.URL())
	births := make(chan *fleetv1.Birth, 4)
	deaths := make(chan *fleetv1.Death, 4)
	con, err := console.Dial(ctx, console.Config{BrokerURL: u, Scheme: topic.Default(), Encoding: codec.JSON, Watch: func(m console.Received) {
		switch msg := m.Message.(type) {
		case *fleetv1.Birth:
			births <- msg
		case *fleetv1.Death:
			deaths <- msg
		}
	}})
	if err != nil {
		return err
	}
	defer con.Close()

	stateDir, err := os.MkdirTemp("", "fleet-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	const tenant, gw = "demo", "gateway-1"
	docker, err := engine.NewDocker("", tenant+"/"+gw, log)
	if err != nil {
		return err
	}
	defer docker.Close()
	agent, err := gateway.New(gateway.Config{
		Engine: docker, EngineInfo: docker.Info,
		Tenant: tenant, ID: gw, Scheme: topic.Default(), Encoding: codec.JSON, StateDir: stateDir,
		Labels: map[string]string{"site": "demo"}, BrokerURL: u, KeepAlive: 30 * time.Second,
		SessionExpiry: time.Hour, Backoff: backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second},
		Version: "demo", Logger: log,
	})
	if err != nil {
		return err
	}
	agentCtx, stopAgent := context.WithCancel(context.WithoutCancel(ctx))
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(agentCtx) }()
	defer func() { stopAgent(); <-agentDone }()
	step("fleet-agent %s/%s started (state in %s)", tenant, gw, stateDir)

	var birth *fleetv1.Birth
	select {
	case birth = <-births:
	case <-ctx.Done():
		return errors.New("no birth certificate from the agent")
	}
	step("birth certificate on %s", topic.Default().Birth(tenant, gw))
	printJSON(out, birth)

	cmd := &fleetv1.Command{Id: "demo-rebirth-1", IssuedAt: timestamppb.Now(), Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}
	step("sending a command on %s", topic.Default().Command(tenant, gw, topic.Rebirth))
	printJSON(out, cmd)
	req, err := con.Send(ctx, tenant, gw, cmd)
	if err != nil {
		return err
	}
	reply, err := req.Final(ctx)
	if err != nil {
		return err
	}
	step("reply")
	printJSON(out, reply)
	if reply.GetResult() != fleetv1.Reply_SUCCEEDED {
		return fmt.Errorf("command %s: %s", reply.GetResult(), reply.GetMessage())
	}

	step("stopping the agent: it publishes its death certificate")
	stopAgent()
	if err := <-agentDone; err != nil {
		return err
	}
	agentDone <- nil
	select {
	case d := <-deaths:
		printJSON(out, d)
	case <-ctx.Done():
		return errors.New("no death certificate after shutdown")
	}
	step("demo finished")
	return nil
}

func printJSON(out io.Writer, m proto.Message) {
	b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	fmt.Fprintln(out, string(b))
}
