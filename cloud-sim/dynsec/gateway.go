package dynsec

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/fleet-agent/fleet/protocol/topic"
)

// RolePrefix begins the name of every role this package makes: a
// gateway's role is RolePrefix + "{tenant}/{gateway}". A client holding
// one is this product's; no other client or role is ever changed.
const RolePrefix = "fleet-gateway/"

// TextName marks the clients this package makes, for operators reading
// `mosquitto_ctrl dynsec listClients`.
const TextName = "Fleet Agent gateway (managed by cloud-sim)"

// The plugin's ACL types.
const (
	PublishSend    = "publishClientSend"
	PublishReceive = "publishClientReceive"
	Subscribe      = "subscribePattern"
)

// Gateway is a gateway's identity as the broker keeps it.
type Gateway struct {
	Tenant, ID string
	Groups     []string
}

// Username is the gateway's username and client id, as on the embedded
// broker.
func (g Gateway) Username() string { return g.Tenant + "/" + g.ID }

func roleName(username string) string { return RolePrefix + username }

// ACLs are the rules of g's role under scheme: what broker.Identity.Allowed
// lets a gateway do, and nothing else.
//
//	publish   {prefix}/{tenant}/{gateway}/birth|death|reply|events|metrics
//	publish   {prefix}/{tenant}/{gateway}/reply/+, status/+ and logs/+
//	subscribe {prefix}/{tenant}/{gateway}/cmd/+ (or one verb), and receive it
//	subscribe {prefix}/{tenant}/group/{group}/cmd/+, for its groups
//
// Then, at a lower priority, a denial of everything, so that the broker's
// default access (which for receiving is allow) decides nothing for it. A
// Will is checked as a publication when the gateway connects.
func ACLs(scheme topic.Scheme, g Gateway) []ACL {
	var acls []ACL
	allow := func(typ, topic string) { acls = append(acls, ACL{Type: typ, Topic: topic, Priority: 1, Allow: true}) }
	for _, t := range []string{
		scheme.Birth(g.Tenant, g.ID), scheme.Death(g.Tenant, g.ID), scheme.Reply(g.Tenant, g.ID),
		scheme.Events(g.Tenant, g.ID), scheme.Metrics(g.Tenant, g.ID),
		scheme.ConsoleReply(g.Tenant, g.ID, "+"), scheme.Status(g.Tenant, g.ID, "+"), scheme.LogStream(g.Tenant, g.ID, "+"),
	} {
		allow(PublishSend, t)
	}
	read := []string{scheme.CommandFilter(g.Tenant, g.ID)}
	for _, grp := range g.Groups {
		read = append(read, scheme.GroupCommandFilter(g.Tenant, grp))
	}
	for _, t := range read {
		allow(Subscribe, t)
		allow(PublishReceive, t)
	}
	for _, typ := range []string{PublishSend, PublishReceive, Subscribe} {
		acls = append(acls, ACL{Type: typ, Topic: "#", Priority: 0, Allow: false})
	}
	sortACLs(acls)
	return acls
}

func sortACLs(acls []ACL) {
	slices.SortFunc(acls, func(a, b ACL) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Topic, b.Topic))
	})
}

// client is a client as getClient and listClients describe it.
type client struct {
	Username string    `json:"username"`
	ClientID string    `json:"clientid"`
	Roles    []RoleRef `json:"roles"`
	Disabled bool      `json:"disabled"`
}

// owned reports whether c holds its own gateway role.
func (c *client) owned() bool {
	return slices.ContainsFunc(c.Roles, func(r RoleRef) bool { return r.RoleName == roleName(c.Username) })
}

// role is a role as getRole and listRoles describe it.
type role struct {
	RoleName string `json:"rolename"`
	ACLs     []ACL  `json:"acls"`
}

// plan is the commands that make the broker's client c and role r (nil
// when missing) what gateway g needs under scheme; password, when not
// empty, becomes the client's. It refuses a client of that name that is
// not this product's.
func plan(scheme topic.Scheme, g Gateway, password string, c *client, r *role) ([]Command, error) {
	user, rn := g.Username(), roleName(g.Username())
	if c != nil && !c.owned() {
		return nil, fmt.Errorf("dynsec: Mosquitto already has a client %q that cloud-sim did not make (it lacks role %q): delete it (mosquitto_ctrl dynsec deleteClient %s) or provision another gateway id", user, rn, user)
	}
	want := ACLs(scheme, g)
	var cmds []Command
	if r == nil {
		cmds = append(cmds, Command{Command: "createRole", RoleName: rn, ACLs: want})
	} else {
		cmds = append(cmds, aclChanges(rn, r.ACLs, want)...)
	}
	switch {
	case c == nil:
		cmds = append(cmds, Command{Command: "createClient", Username: user, Password: password, ClientID: user,
			TextName: TextName, Roles: []RoleRef{{RoleName: rn}}})
	case password != "":
		cmds = append(cmds, Command{Command: "setClientPassword", Username: user, Password: password})
	}
	if c != nil && !c.Disabled && len(cmds) > 0 {
		// The plugin does not disconnect a client whose password or role
		// changed; disabling it does. (One the operator disabled stays so.)
		cmds = append(cmds, Command{Command: "disableClient", Username: user}, Command{Command: "enableClient", Username: user})
	}
	return cmds, nil
}

// aclChanges are the commands that turn role rn's rules have into want:
// removals first (of rules gone or changed), then additions.
func aclChanges(rn string, have, want []ACL) []Command {
	var rm, add []Command
	key := func(a ACL) string { return a.Type + " " + a.Topic }
	haveBy := map[string]ACL{}
	for _, a := range have {
		haveBy[key(a)] = a
	}
	wantBy := map[string]ACL{}
	for _, a := range want {
		wantBy[key(a)] = a
		if h, ok := haveBy[key(a)]; !ok || h != a {
			add = append(add, Command{Command: "addRoleACL", RoleName: rn, ACL: &a})
		}
	}
	for _, a := range have {
		if w, ok := wantBy[key(a)]; !ok || w != a {
			rm = append(rm, Command{Command: "removeRoleACL", RoleName: rn, ACL: &ACL{Type: a.Type, Topic: a.Topic}})
		}
	}
	return append(rm, add...)
}

// Put makes gateway tenant/id's client and role on the broker what its
// identity says: created when missing (client id forced to the username),
// its role's rules changed to its groups', and password, when not empty,
// made its password. A connected gateway whose rules or password changed
// is disconnected, so that it logs in and subscribes again under them.
func (c *Client) Put(ctx context.Context, tenant, id string, groups []string, password string) error {
	g := Gateway{Tenant: tenant, ID: id, Groups: groups}
	cl, r, err := c.get(ctx, g.Username())
	if err != nil {
		return err
	}
	cmds, err := plan(c.cfg.Scheme, g, password, cl, r)
	if err != nil {
		return err
	}
	if _, err := c.Do(ctx, cmds...); err != nil {
		return err
	}
	c.log.Info("dynsec: gateway's client put", "username", g.Username(), "commands", len(cmds), "password", password != "")
	return nil
}

// get returns the broker's client and role of username (nil when missing).
func (c *Client) get(ctx context.Context, username string) (*client, *role, error) {
	resps, err := c.exchange(ctx, []Command{{Command: "getClient", Username: username}, {Command: "getRole", RoleName: roleName(username)}})
	if err != nil {
		return nil, nil, err
	}
	var cl struct{ Client *client }
	var r struct{ Role *role }
	for i, dst := range []any{&cl, &r} {
		switch resps[i].Error {
		case "":
			if err := json.Unmarshal(resps[i].Data, dst); err != nil {
				return nil, nil, fmt.Errorf("dynsec %s %s: response: %w", resps[i].Command, username, err)
			}
		case textClientNotFound, textRoleNotFound:
		default:
			return nil, nil, &Error{Command: resps[i].Command, Target: username, Text: resps[i].Error}
		}
	}
	return cl.Client, r.Role, nil
}

// Delete deletes gateway tenant/id's client, which disconnects it at once,
// and its role. A client missing already is no error; one that is not
// this product's is refused.
func (c *Client) Delete(ctx context.Context, tenant, id string) error {
	user := Gateway{Tenant: tenant, ID: id}.Username()
	cl, r, err := c.get(ctx, user)
	if err != nil {
		return err
	}
	var cmds []Command
	if cl != nil {
		if !cl.owned() {
			return fmt.Errorf("dynsec: Mosquitto's client %q is not cloud-sim's (it lacks role %q): left alone", user, roleName(user))
		}
		cmds = append(cmds, Command{Command: "deleteClient", Username: user})
	}
	if r != nil {
		cmds = append(cmds, Command{Command: "deleteRole", RoleName: roleName(user)})
	}
	if _, err := c.Do(ctx, cmds...); err != nil && !notFound(err) {
		return err
	}
	c.log.Info("dynsec: gateway's client deleted", "username", user, "existed", cl != nil)
	return nil
}
