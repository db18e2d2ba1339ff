package mqttclienttest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// LogsGateway plays a gateway's side of the logs verbs as fleet.proto
// describes it, over MQTT: ACCEPTED (REJECTED NOT_FOUND for a deployment
// it lacks), LogChunks QoS 1 on …/{gateway}/logs/{command id} with
// sequences from 0, the last one final, then the final reply. To test the
// cloud's ordering it publishes each stream's chunks out of order and
// some twice. A follow sends a line every FollowEvery until a cancel-logs
// (final chunk CANCELED) or its until (UNTIL).
type LogsGateway struct {
	Tenant, ID string
	// Lines are each deployment's lines, oldest first; a tail sends the
	// last ones, each a chunk of up to two lines.
	Lines map[string][]string
	// FollowEvery paces a follow's new lines (20 ms when zero).
	FollowEvery time.Duration
	// Announce publishes a birth (session 1) and a RUNNING status for each
	// deployment of Lines once connected, retained, as an agent does.
	Announce bool

	t      testing.TB
	c      *paho.Client
	scheme topic.Scheme

	mu       sync.Mutex
	commands []*fleetv1.Command       // every command received; guarded by mu
	follows  map[string]chan struct{} // open follows by command id; guarded by mu
	wg       sync.WaitGroup
}

// StartLogsGateway connects gw to brokerURL as client id and username
// "{tenant}/{id}" with password (empty: none) and subscribes to its
// commands; it disconnects at cleanup.
func StartLogsGateway(t testing.TB, brokerURL, password string, gw *LogsGateway) *LogsGateway {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	gw.t, gw.scheme, gw.follows = t, topic.Default(), map[string]chan struct{}{}
	if gw.FollowEvery == 0 {
		gw.FollowEvery = 20 * time.Millisecond
	}
	gw.c = paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			// Off paho's goroutine: answering waits for PUBACKs.
			gw.wg.Add(1)
			go func() { defer gw.wg.Done(); gw.receive(pr.Packet) }()
			return true, nil
		},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	user := gw.Tenant + "/" + gw.ID
	cp := &paho.Connect{ClientID: user, KeepAlive: 30, CleanStart: true}
	if password != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte(password), true
	}
	if _, err := gw.c.Connect(ctx, cp); err != nil {
		t.Fatalf("logs gateway %s: connect: %v", user, err)
	}
	if _, err := gw.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: gw.scheme.CommandFilter(gw.Tenant, gw.ID), QoS: 1}}}); err != nil {
		t.Fatalf("logs gateway %s: subscribe: %v", user, err)
	}
	if gw.Announce {
		gw.announce()
	}
	t.Cleanup(func() {
		gw.mu.Lock()
		for id, ch := range gw.follows {
			close(ch)
			delete(gw.follows, id)
		}
		gw.mu.Unlock()
		gw.wg.Wait()
		gw.c.Disconnect(&paho.Disconnect{})
	})
	return gw
}

// announce publishes the gateway's birth and its deployments' statuses.
func (gw *LogsGateway) announce() {
	now := timestamppb.Now()
	gw.publishRetained(gw.scheme.Birth(gw.Tenant, gw.ID), &fleetv1.Birth{GatewayId: gw.ID, Tenant: gw.Tenant, Session: 1, AgentVersion: "logs-gateway",
		ProtocolVersion: 1, StartedAt: now, Timestamp: now, Capabilities: []string{string(topic.Logs), string(topic.CancelLogs)}})
	for name := range gw.Lines {
		gw.publishRetained(gw.scheme.Status(gw.Tenant, gw.ID, name), &fleetv1.DeploymentStatus{Name: name, Revision: 1,
			Phase: fleetv1.DeploymentStatus_RUNNING, Image: "example.test/" + name + ":1", UpdatedAt: now})
	}
}

func (gw *LogsGateway) publishRetained(name string, m proto.Message) {
	payload, err := codec.Marshal(codec.Protobuf, m)
	if err != nil {
		gw.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	p := &paho.Publish{Topic: name, QoS: 1, Retain: true, Payload: payload, Properties: &paho.PublishProperties{ContentType: codec.Protobuf.ContentType()}}
	if _, err := gw.c.Publish(ctx, p); err != nil {
		gw.t.Fatalf("logs gateway: publish %s: %v", name, err)
	}
}

// Commands returns the commands received so far.
func (gw *LogsGateway) Commands() []*fleetv1.Command {
	gw.mu.Lock()
	defer gw.mu.Unlock()
	return slices.Clone(gw.commands)
}

// Following reports how many follows are streaming.
func (gw *LogsGateway) Following() int {
	gw.mu.Lock()
	defer gw.mu.Unlock()
	return len(gw.follows)
}

func (gw *LogsGateway) receive(p *paho.Publish) {
	cmd := new(fleetv1.Command)
	if err := codec.Unmarshal(codec.FromContentType(p.Properties.ContentType), p.Payload, cmd); err != nil {
		gw.t.Logf("logs gateway: undecodable command on %s: %v", p.Topic, err)
		return
	}
	// A cancel ends its follow in the same step that records it, so a
	// test that sees the cancel among Commands sees the follow gone.
	gw.mu.Lock()
	gw.commands = append(gw.commands, cmd)
	cancelled, wasFollowing := gw.follows[cmd.GetCancelLogs().GetRequestId()]
	if cmd.GetCancelLogs() != nil {
		delete(gw.follows, cmd.GetCancelLogs().GetRequestId())
	}
	gw.mu.Unlock()
	respond := func(rep *fleetv1.Reply) {
		rep.CommandId = cmd.GetId()
		gw.publish(p.Properties.ResponseTopic, p.Properties.CorrelationData, rep)
	}
	switch {
	case cmd.GetLogs() != nil:
		lines, ok := gw.Lines[cmd.GetLogs().GetDeployment()]
		if !ok {
			respond(&fleetv1.Reply{Result: fleetv1.Reply_REJECTED, Code: fleetv1.Reply_NOT_FOUND, Message: "no deployment " + cmd.GetLogs().GetDeployment()})
			return
		}
		respond(&fleetv1.Reply{Result: fleetv1.Reply_ACCEPTED})
		var stop chan struct{}
		if cmd.GetLogs().GetFollow() {
			stop = make(chan struct{})
			gw.mu.Lock()
			gw.follows[cmd.GetId()] = stop
			gw.mu.Unlock()
		}
		gw.wg.Add(1)
		go func() {
			defer gw.wg.Done()
			gw.stream(cmd.GetId(), cmd.GetLogs(), lines, stop)
			respond(&fleetv1.Reply{Result: fleetv1.Reply_SUCCEEDED})
		}()
	case cmd.GetCancelLogs() != nil:
		if wasFollowing {
			close(cancelled)
		}
		respond(&fleetv1.Reply{Result: fleetv1.Reply_SUCCEEDED})
	}
}

// stream publishes one logs stream's chunks: the tail two lines a chunk,
// every pair of chunks swapped and the first sent twice; then, for a
// follow, one line a chunk until stop or until; then the final chunk.
func (gw *LogsGateway) stream(id string, req *fleetv1.Logs, lines []string, stop chan struct{}) {
	tail := int(req.GetTail())
	if tail == 0 {
		tail = 100
	}
	lines = lines[max(0, len(lines)-tail):]
	var chunks []*fleetv1.LogChunk
	for i := 0; i < len(lines); i += 2 {
		chunks = append(chunks, gw.chunk(id, uint64(len(chunks)), lines[i:min(i+2, len(lines))]...))
	}
	for i := 0; i+1 < len(chunks); i += 2 {
		gw.publishChunk(chunks[i+1])
		gw.publishChunk(chunks[i])
		if i == 0 {
			gw.publishChunk(chunks[i])
		}
	}
	if len(chunks)%2 == 1 {
		gw.publishChunk(chunks[len(chunks)-1])
	}
	seq := uint64(len(chunks))
	end := fleetv1.LogChunk_COMPLETE
	if stop != nil {
		end = gw.follow(id, req, &seq, stop)
	}
	final := gw.chunk(id, seq)
	final.Final, final.Ended = true, end
	gw.publishChunk(final)
}

func (gw *LogsGateway) follow(id string, req *fleetv1.Logs, seq *uint64, stop chan struct{}) fleetv1.LogChunk_End {
	until := time.Now().Add(10 * time.Minute)
	if u := req.GetUntil(); u != nil && u.AsTime().Before(until) {
		until = u.AsTime()
	}
	deadline := time.NewTimer(time.Until(until))
	defer deadline.Stop()
	tick := time.NewTicker(gw.FollowEvery)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-stop:
			return fleetv1.LogChunk_CANCELED
		case <-deadline.C:
			gw.mu.Lock()
			delete(gw.follows, id)
			gw.mu.Unlock()
			return fleetv1.LogChunk_UNTIL
		case <-tick.C:
			gw.publishChunk(gw.chunk(id, *seq, fmt.Sprintf("follow %d", n)))
			*seq++
		}
	}
}

func (gw *LogsGateway) chunk(id string, seq uint64, texts ...string) *fleetv1.LogChunk {
	c := &fleetv1.LogChunk{RequestId: id, GatewayId: gw.ID, Sequence: seq}
	for i, text := range texts {
		stream := fleetv1.LogLine_STDOUT
		if i%2 == 1 {
			stream = fleetv1.LogLine_STDERR
		}
		c.Lines = append(c.Lines, &fleetv1.LogLine{Timestamp: timestamppb.Now(), Stream: stream, Service: "web", Text: text})
	}
	return c
}

func (gw *LogsGateway) publishChunk(c *fleetv1.LogChunk) {
	gw.publish(gw.scheme.LogStream(gw.Tenant, gw.ID, c.GetRequestId()), nil, c)
}

func (gw *LogsGateway) publish(name string, correlation []byte, m proto.Message) {
	payload, err := codec.Marshal(codec.Protobuf, m)
	if err != nil {
		gw.t.Errorf("logs gateway: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	p := &paho.Publish{Topic: name, QoS: 1, Payload: payload, Properties: &paho.PublishProperties{ContentType: codec.Protobuf.ContentType(), CorrelationData: correlation}}
	if _, err := gw.c.Publish(ctx, p); err != nil {
		gw.t.Logf("logs gateway: publish %s: %v", name, err)
	}
}
