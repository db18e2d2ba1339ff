package mqttlink

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"
)

// TestUserPropertiesReachTheAgent: the commands' signatures travel in user
// properties. The agent asks for problem information in CONNECT (else
// mochi-mqtt strips user properties from what it forwards) and passes them
// on to the processor, the first value of a repeated key.
func TestUserPropertiesReachTheAgent(t *testing.T) {
	l := &Link{cfg: Config{Will: func() (Message, error) { return Message{Topic: "w"}, nil }}}
	for _, props := range []*paho.ConnectProperties{nil, {}} {
		cp, err := l.buildConnect(&paho.Connect{Properties: props}, nil)
		if err != nil || cp.Properties == nil || !cp.Properties.RequestProblemInfo {
			t.Errorf("CONNECT properties = %+v, %v; want RequestProblemInfo", cp.Properties, err)
		}
	}
	in := inbound(&paho.Publish{Topic: "t", Properties: &paho.PublishProperties{User: paho.UserProperties{
		{Key: "fleet-key-id", Value: "k1"}, {Key: "fleet-signature", Value: "s"}, {Key: "fleet-key-id", Value: "k2"}}}})
	if in.UserProperties["fleet-key-id"] != "k1" || in.UserProperties["fleet-signature"] != "s" {
		t.Errorf("user properties = %v, want fleet-key-id k1 and fleet-signature s", in.UserProperties)
	}
}
