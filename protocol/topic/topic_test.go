package topic_test

import (
	"strings"
	"testing"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
	"github.com/google/go-cmp/cmp"
)

func TestBuildParse(t *testing.T) {
	s := topic.Default()
	tests := []struct {
		topic string
		want  topic.Topic
	}{
		{s.Birth("acme", "gw-1"), topic.Topic{Tenant: "acme", Gateway: "gw-1", Kind: topic.Birth}},
		{s.Death("acme", "gw-1"), topic.Topic{Tenant: "acme", Gateway: "gw-1", Kind: topic.Death}},
		{s.Reply("acme", "gw.1"), topic.Topic{Tenant: "acme", Gateway: "gw.1", Kind: topic.Reply}},
		{s.ConsoleReply("acme", "gw", "console-7"), topic.Topic{Tenant: "acme", Gateway: "gw", Kind: topic.Reply, Console: "console-7"}},
		{s.Events("acme", "gw"), topic.Topic{Tenant: "acme", Gateway: "gw", Kind: topic.Events}},
		{s.Metrics("acme", "gw"), topic.Topic{Tenant: "acme", Gateway: "gw", Kind: topic.Metrics}},
		{s.Command("acme", "gw", topic.SetCredentials), topic.Topic{Tenant: "acme", Gateway: "gw", Kind: topic.Command, Verb: topic.SetCredentials}},
		{s.GroupCommand("acme", "berlin", topic.Deploy), topic.Topic{Tenant: "acme", Group: "berlin", Kind: topic.Command, Verb: topic.Deploy}},
		{s.Status("acme", "gw", "web-1"), topic.Topic{Tenant: "acme", Gateway: "gw", Kind: topic.Status, Deployment: "web-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			got, err := s.Parse(tt.topic)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Parse (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	s := topic.Default()
	for _, in := range []string{
		"", "fleet/v1", "other/v1/acme/gw/birth", "fleet/v1/acme/gw",
		"fleet/v1/acme/gw/cmd/explode", "fleet/v1/acme/gw/cmd", "fleet/v1/acme/gw/birth/x",
		"fleet/v1/acme/+/birth", "fleet/v1/acme/#", "fleet/v1/ac me/gw/birth",
		"fleet/v1/acme/group/birth", "fleet/v1/acme/group/g1/cmd", "fleet/v1/acme/gw/status/Web",
		"fleet/v1/acme/gw/reply/a/b", "fleet/v1/" + strings.Repeat("t", 65) + "/gw/birth",
	} {
		if got, err := s.Parse(in); err == nil {
			t.Errorf("Parse(%q) = %+v, want error", in, got)
		}
	}
}

func TestScheme(t *testing.T) {
	for _, bad := range []string{"/x", "x/", "a//b", "a/+", "a/#"} {
		if _, err := topic.NewScheme(bad); err == nil {
			t.Errorf("NewScheme(%q) succeeded, want error", bad)
		}
	}
	s, err := topic.NewScheme("site/a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.CommandFilter("t", "g"), "site/a/t/g/cmd/+"; got != want {
		t.Errorf("CommandFilter = %q, want %q", got, want)
	}
	if got, want := s.Filter(topic.Reply), "site/a/+/+/reply/#"; got != want {
		t.Errorf("Filter(Reply) = %q, want %q", got, want)
	}
	if err := topic.CheckGatewayID("group"); err == nil {
		t.Error(`CheckGatewayID("group") succeeded, want reserved-id error`)
	}
}

func FuzzParse(f *testing.F) {
	s := topic.Default()
	f.Add(s.Birth("a", "b"))
	f.Add(s.GroupCommand("a", "g", topic.Deploy))
	f.Add(s.Status("a", "b", "web"))
	f.Add("fleet/v1/a/b/reply/c")
	f.Fuzz(func(t *testing.T, in string) {
		tp, err := s.Parse(in)
		if err != nil {
			return
		}
		// Whatever parses must rebuild to the same topic.
		var out string
		switch {
		case tp.Group != "":
			out = s.GroupCommand(tp.Tenant, tp.Group, tp.Verb)
		case tp.Kind == topic.Command:
			out = s.Command(tp.Tenant, tp.Gateway, tp.Verb)
		case tp.Kind == topic.Status:
			out = s.Status(tp.Tenant, tp.Gateway, tp.Deployment)
		case tp.Kind == topic.Reply && tp.Console != "":
			out = s.ConsoleReply(tp.Tenant, tp.Gateway, tp.Console)
		default:
			build := map[topic.Kind]func(string, string) string{
				topic.Birth: s.Birth, topic.Death: s.Death, topic.Reply: s.Reply,
				topic.Events: s.Events, topic.Metrics: s.Metrics,
			}[tp.Kind]
			out = build(tp.Tenant, tp.Gateway)
		}
		if out != in {
			t.Fatalf("Parse(%q) = %+v, rebuilt as %q", in, tp, out)
		}
	})
}

func TestVerbOf(t *testing.T) {
	tests := []struct {
		cmd  *fleetv1.Command
		want topic.Verb
	}{
		{&fleetv1.Command{}, ""},
		{&fleetv1.Command{Body: &fleetv1.Command_Rebirth{}}, topic.Rebirth},
		{&fleetv1.Command{Body: &fleetv1.Command_SetCredentials{}}, topic.SetCredentials},
		{&fleetv1.Command{Body: &fleetv1.Command_Restart{}}, topic.Restart},
	}
	for _, tt := range tests {
		if got := topic.VerbOf(tt.cmd); got != tt.want {
			t.Errorf("VerbOf(%v) = %q, want %q", tt.cmd, got, tt.want)
		}
	}
	if got := topic.DeleteCredentials.BodyField(); got != "deleteCredentials" {
		t.Errorf("BodyField = %q, want deleteCredentials", got)
	}
}

// TestIDCharacters: ids are 1-64 of A-Z a-z 0-9 . _ - and deployment
// names 1-63 of a-z 0-9 -, counted in bytes (a multi-byte letter is not
// one of them).
func TestIDCharacters(t *testing.T) {
	tests := []struct {
		in             string
		id, deployment bool
	}{
		{"gw-1", true, true},
		{"Edge_01.berlin", true, false},
		{"", false, false},
		{strings.Repeat("a", 63), true, true},
		{strings.Repeat("a", 64), true, false},
		{strings.Repeat("a", 65), false, false},
		{"gw/1", false, false},
		{"gw+1", false, false},
		{"gw 1", false, false},
		{"gw\x001", false, false},
		{"grün", false, false},
		{"ünï", false, false},
	}
	for _, tt := range tests {
		if err := topic.CheckID("gateway id", tt.in); (err == nil) != tt.id {
			t.Errorf("CheckID(%q) = %v, want valid %v", tt.in, err, tt.id)
		}
		if err := topic.CheckDeploymentName(tt.in); (err == nil) != tt.deployment {
			t.Errorf("CheckDeploymentName(%q) = %v, want valid %v", tt.in, err, tt.deployment)
		}
	}
}
