package dynsec

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// fakePlugin answers commands as the plugin would, from answer (success
// without data when nil), and records them as sent (without their
// correlation data).
type fakePlugin struct {
	c      *Client
	sent   [][]Command
	answer func(Command) Response
	silent bool // answer nothing
}

func (f *fakePlugin) Publish(_ context.Context, payload []byte) error {
	var msg struct{ Commands []Command }
	if err := json.Unmarshal(payload, &msg); err != nil {
		return err
	}
	var resps []Response
	var sent []Command
	for _, cmd := range msg.Commands {
		r := Response{Command: cmd.Command}
		if f.answer != nil {
			r = f.answer(cmd)
		}
		r.CorrelationData = cmd.CorrelationData
		resps = append(resps, r)
		cmd.CorrelationData = ""
		sent = append(sent, cmd)
	}
	f.sent = append(f.sent, sent)
	if f.silent {
		return nil
	}
	slices.Reverse(resps) // matched by correlation data, not order
	b, _ := json.Marshal(map[string]any{"responses": append(resps, Response{Command: "other", CorrelationData: "not-ours"})})
	f.c.receive(b)
	return nil
}

func newFake(answer func(Command) Response) *fakePlugin {
	f := &fakePlugin{answer: answer}
	f.c = newClient(Config{Scheme: topic.Default(), Username: "admin"}, f)
	return f
}

func data(cmd string, v any) Response {
	b, _ := json.Marshal(v)
	return Response{Command: cmd, Data: b}
}

// existing answers getClient and getRole with a gateway client holding
// its role, whose rules are those of groups.
func existing(g Gateway, owned bool) func(Command) Response {
	return func(cmd Command) Response {
		switch cmd.Command {
		case "getClient":
			cl := client{Username: g.Username()}
			if owned {
				cl.Roles = []RoleRef{{RoleName: roleName(g.Username())}}
			}
			return data(cmd.Command, map[string]any{"client": cl})
		case "getRole":
			return data(cmd.Command, map[string]any{"role": role{RoleName: roleName(g.Username()), ACLs: ACLs(topic.Default(), g)}})
		}
		return Response{Command: cmd.Command}
	}
}

func missing(cmd Command) Response {
	switch cmd.Command {
	case "getClient":
		return Response{Command: cmd.Command, Error: textClientNotFound}
	case "getRole":
		return Response{Command: cmd.Command, Error: textRoleNotFound}
	}
	return Response{Command: cmd.Command}
}

// TestEncoding: the commands each change sends, as the plugin reads them.
func TestEncoding(t *testing.T) {
	s := topic.Default()
	gw := Gateway{Tenant: "acme", ID: "gw-1", Groups: []string{"berlin"}}
	role := roleName("acme/gw-1")
	get := []Command{{Command: "getClient", Username: "acme/gw-1"}, {Command: "getRole", RoleName: role}}
	kick := []Command{{Command: "disableClient", Username: "acme/gw-1"}, {Command: "enableClient", Username: "acme/gw-1"}}
	acl := func(typ, topic string, allow bool) *ACL {
		return &ACL{Type: typ, Topic: topic, Priority: 1, Allow: allow}
	}
	for _, tt := range []struct {
		name   string
		answer func(Command) Response
		do     func(*Client) error
		want   [][]Command
	}{
		{"provision", missing, func(c *Client) error { return c.Put(t.Context(), "acme", "gw-1", []string{"berlin"}, "pw") },
			[][]Command{get, {{Command: "createRole", RoleName: role, ACLs: ACLs(s, gw)},
				{Command: "createClient", Username: "acme/gw-1", Password: "pw", ClientID: "acme/gw-1", TextName: TextName, Roles: []RoleRef{{RoleName: role}}}}}},
		{"new password", existing(gw, true), func(c *Client) error { return c.Put(t.Context(), "acme", "gw-1", []string{"berlin"}, "pw2") },
			[][]Command{get, append([]Command{{Command: "setClientPassword", Username: "acme/gw-1", Password: "pw2"}}, kick...)}},
		{"unchanged", existing(gw, true), func(c *Client) error { return c.Put(t.Context(), "acme", "gw-1", []string{"berlin"}, "") },
			[][]Command{get}},
		{"group change", existing(gw, true), func(c *Client) error { return c.Put(t.Context(), "acme", "gw-1", []string{"paris"}, "") },
			[][]Command{get, append([]Command{
				{Command: "removeRoleACL", RoleName: role, ACL: &ACL{Type: PublishReceive, Topic: s.GroupCommandFilter("acme", "berlin")}},
				{Command: "removeRoleACL", RoleName: role, ACL: &ACL{Type: Subscribe, Topic: s.GroupCommandFilter("acme", "berlin")}},
				{Command: "addRoleACL", RoleName: role, ACL: acl(PublishReceive, s.GroupCommandFilter("acme", "paris"), true)},
				{Command: "addRoleACL", RoleName: role, ACL: acl(Subscribe, s.GroupCommandFilter("acme", "paris"), true)},
			}, kick...)}},
		{"deprovision", existing(gw, true), func(c *Client) error { return c.Delete(t.Context(), "acme", "gw-1") },
			[][]Command{get, {{Command: "deleteClient", Username: "acme/gw-1"}, {Command: "deleteRole", RoleName: role}}}},
		{"deprovision twice", missing, func(c *Client) error { return c.Delete(t.Context(), "acme", "gw-1") },
			[][]Command{get}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(tt.answer)
			if err := tt.do(f.c); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, f.sent); diff != "" {
				t.Errorf("commands sent (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCommandJSON: the wire form of a command with an ACL, which the
// plugin reads flat.
func TestCommandJSON(t *testing.T) {
	b, err := json.Marshal(Command{Command: "addRoleACL", RoleName: "r", ACL: &ACL{Type: Subscribe, Topic: "a/+", Priority: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"command":"addRoleACL","rolename":"r","acltype":"subscribePattern","topic":"a/+","priority":1,"allow":false}`; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

// TestErrors: a refusal names the command, its target and Mosquitto's
// text; a client this product did not make is never changed or deleted;
// a silent broker times out naming the command.
func TestErrors(t *testing.T) {
	gw := Gateway{Tenant: "acme", ID: "gw-1"}
	t.Run("refused", func(t *testing.T) {
		f := newFake(func(cmd Command) Response {
			r := missing(cmd)
			if cmd.Command == "createClient" {
				r.Error = "Client already exists"
			}
			return r
		})
		err := f.c.Put(t.Context(), "acme", "gw-1", nil, "pw")
		var e *Error
		if !errors.As(err, &e) || e.Command != "createClient" || e.Target != "acme/gw-1" || e.Text != "Client already exists" {
			t.Fatalf("err = %v, want the createClient refusal", err)
		}
		if want := `dynsec createClient acme/gw-1: Mosquitto says "Client already exists"`; err.Error() != want {
			t.Errorf("err = %q, want %q", err, want)
		}
	})
	for _, op := range []string{"put", "delete"} {
		t.Run("foreign client "+op, func(t *testing.T) {
			f := newFake(existing(gw, false))
			var err error
			if op == "put" {
				err = f.c.Put(t.Context(), "acme", "gw-1", nil, "pw")
			} else {
				err = f.c.Delete(t.Context(), "acme", "gw-1")
			}
			if err == nil || !strings.Contains(err.Error(), "acme/gw-1") {
				t.Errorf("err = %v, want a refusal naming the client", err)
			}
			if len(f.sent) != 1 {
				t.Errorf("sent %v after the get, want nothing", f.sent[1:])
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(nil)
			f.silent = true
			start := time.Now()
			err := f.c.Delete(t.Context(), "acme", "gw-1")
			if err == nil || !strings.Contains(err.Error(), "dynsec getClient acme/gw-1: no response") || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want a timeout naming getClient", err)
			}
			if d := time.Since(start); d != DefaultTimeout {
				t.Errorf("gave up after %v, want %v", d, DefaultTimeout)
			}
			if n := len(f.c.waiters); n != 0 {
				t.Errorf("%d waiters left", n)
			}
		})
	})
}

// TestACLsMirrorEmbedded: under the plugin's rules (the highest priority
// matching rule decides), a gateway's role allows exactly what the
// embedded broker's ACL allows, for publications and subscriptions.
func TestACLsMirrorEmbedded(t *testing.T) {
	s := topic.Default()
	id := broker.Identity{Tenant: "acme", Gateway: "gw-1", Groups: []string{"berlin", "b2"}}
	acls := ACLs(s, Gateway{Tenant: "acme", ID: "gw-1", Groups: id.Groups})
	var names []string
	for _, tenant := range []string{"acme", "other", "+"} {
		for _, gw := range []string{"gw-1", "gw-2", "group", "+", "#"} {
			base := "fleet/v1/" + tenant + "/" + gw
			names = append(names, base, base+"/#")
			for _, k := range []string{"birth", "death", "reply", "events", "metrics", "status", "logs", "cmd", "other", "berlin", "paris", "b2", "+"} {
				names = append(names, base+"/"+k, base+"/"+k+"/+", base+"/"+k+"/deploy", base+"/"+k+"/#", base+"/"+k+"/cmd/+", base+"/"+k+"/cmd/deploy", base+"/"+k+"/x/y")
			}
		}
	}
	names = append(names, "#", "fleet/v1/#", "other/acme/gw-1/birth", "$CONTROL/dynamic-security/v1")
	for _, name := range names {
		wild := strings.ContainsAny(name, "+#")
		if !wild {
			if got, want := decide(acls, PublishSend, name), id.Allowed(s, name, true); got != want {
				t.Errorf("publish %s: role allows %v, embedded ACL %v", name, got, want)
			}
			if got, want := decide(acls, PublishReceive, name), id.Allowed(s, name, false); got != want {
				t.Errorf("receive %s: role allows %v, embedded ACL %v", name, got, want)
			}
		}
		if got, want := decide(acls, Subscribe, name), id.Allowed(s, name, false); got != want {
			t.Errorf("subscribe %s: role allows %v, embedded ACL %v", name, got, want)
		}
	}
}

// decide is the plugin's check of one role: its rules of typ from the
// highest priority down, the first matching decides; none matching is
// the broker's default, which test asks to be irrelevant (false).
func decide(acls []ACL, typ, name string) bool {
	sorted := slices.Clone(acls)
	slices.SortStableFunc(sorted, func(a, b ACL) int { return b.Priority - a.Priority })
	for _, a := range sorted {
		if a.Type == typ && aclMatches(a.Topic, name, typ == Subscribe) {
			return a.Allow
		}
	}
	return false
}

// aclMatches is Mosquitto's match of an ACL's topic against a topic
// (publications) or a subscription filter (sub): in a filter, '+' is
// matched only by '+' or '#' of the ACL, '#' only by '#'. A '$' topic is
// not matched by a wildcard first level.
func aclMatches(acl, name string, sub bool) bool {
	a, n := strings.Split(acl, "/"), strings.Split(name, "/")
	if strings.HasPrefix(name, "$") && (a[0] == "+" || a[0] == "#") {
		return false
	}
	for i, l := range a {
		if l == "#" {
			return true
		}
		if i >= len(n) {
			return false
		}
		switch {
		case l == "+" && (!sub || n[i] != "#"):
		case l == n[i]:
		default:
			return false
		}
	}
	return len(a) == len(n)
}

// FuzzReceive: whatever the broker sends on the response topic, receive
// neither panics nor answers a command with a response not its own.
func FuzzReceive(f *testing.F) {
	f.Add([]byte(`{"responses":[{"command":"getClient","error":"Client not found","correlationData":"a"}]}`))
	f.Add([]byte(`{"responses":[{"command":"x","data":{"client":{}},"correlationData":7}]}`))
	f.Add([]byte(`{"responses":null}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c := newClient(Config{}, nil)
		ch := make(chan Response, 1)
		c.waiters["mine"] = ch
		c.receive(payload)
		select {
		case r := <-ch:
			if r.CorrelationData != "mine" {
				t.Errorf("waiter got %+v", r)
			}
		default:
		}
	})
}
