// Package dynsec keeps gateways' MQTT identities on Mosquitto 2 through
// its dynamic security plugin: JSON commands published on
// $CONTROL/dynamic-security/v1, answered on
// $CONTROL/dynamic-security/v1/response, each matched to its command by
// correlation data. A gateway is a client (username and client id
// "{tenant}/{gateway}") holding one role of its own, RolePrefix + its
// username, whose ACLs are exactly what the embedded broker's ACL
// (broker.Identity.Allowed) lets it do. Clients without such a role are
// not this product's: they are never changed or deleted.
package dynsec

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// The plugin's API topics.
const (
	CommandTopic  = "$CONTROL/dynamic-security/v1"
	ResponseTopic = CommandTopic + "/response"
)

// DefaultTimeout bounds one exchange of commands when Config.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// Config configures Dial.
type Config struct {
	BrokerURL *url.URL
	// TLS configures an mqtts:// BrokerURL (system roots when nil).
	TLS *tls.Config
	// Username and Password are the plugin's admin login: a client whose
	// role may publish on and subscribe to $CONTROL/dynamic-security/#
	// (what `mosquitto_ctrl dynsec init` creates). See ReadLogin.
	Username string
	Password []byte
	// ClientID of the admin connection; random when empty.
	ClientID string
	Scheme   topic.Scheme
	// Timeout bounds one exchange of commands (DefaultTimeout when 0).
	Timeout time.Duration
	Logger  *slog.Logger
}

// publisher sends one command message; the client's answers come back
// through Client.receive. autopaho in Dial, a fake in tests.
type publisher interface {
	Publish(ctx context.Context, payload []byte) error
}

// Client sends commands to the plugin and manages gateways through them.
type Client struct {
	cfg  Config
	log  *slog.Logger
	pub  publisher
	stop func() error

	mu sync.Mutex
	// waiters by correlation data; guarded by mu.
	waiters map[string]chan Response
}

// Command is one command of the plugin's API. Only the fields a command
// takes are set; ACL, when set, adds acltype, topic, priority and allow.
type Command struct {
	Command         string    `json:"command"`
	Username        string    `json:"username,omitempty"`
	Password        string    `json:"password,omitempty"`
	ClientID        string    `json:"clientid,omitempty"`
	TextName        string    `json:"textname,omitempty"`
	RoleName        string    `json:"rolename,omitempty"`
	Roles           []RoleRef `json:"roles,omitempty"`
	ACLs            []ACL     `json:"acls,omitempty"`
	Verbose         bool      `json:"verbose,omitempty"`
	Count           int       `json:"count,omitempty"`
	CorrelationData string    `json:"correlationData,omitempty"`
	*ACL
}

// RoleRef names a role a client holds.
type RoleRef struct {
	RoleName string `json:"rolename"`
	Priority int    `json:"priority,omitempty"`
}

// ACL is one access rule of a role. The plugin checks a role's rules from
// the highest priority down; the first whose topic matches decides.
type ACL struct {
	Type     string `json:"acltype"`
	Topic    string `json:"topic"`
	Priority int    `json:"priority"`
	Allow    bool   `json:"allow"`
}

// Response is the plugin's answer to one command: Error is its error text
// ("" on success), Data what a get or list command returns.
type Response struct {
	Command         string          `json:"command"`
	Error           string          `json:"error,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
	CorrelationData string          `json:"correlationData,omitempty"`
}

// Error is a command the plugin refused.
type Error struct {
	Command string // e.g. "createClient"
	Target  string // the username or role it was about
	Text    string // Mosquitto's error text, e.g. "Client already exists"
}

func (e *Error) Error() string {
	return fmt.Sprintf("dynsec %s %s: Mosquitto says %q", e.Command, e.Target, e.Text)
}

// Mosquitto's error texts this package acts on.
const (
	textClientNotFound = "Client not found"
	textRoleNotFound   = "Role not found"
)

// notFound reports whether err is the plugin's answer that the client or
// role does not exist.
func notFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Text == textClientNotFound || e.Text == textRoleNotFound)
}

// ReadLogin reads the admin login file: one line username:password. Its
// content is never put in an error.
func ReadLogin(path string) (user string, password []byte, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("--broker-dynsec-login: %w", err)
	}
	text := strings.TrimSpace(string(b))
	u, p, ok := strings.Cut(text, ":")
	if !ok || u == "" || p == "" || strings.ContainsAny(text, "\r\n") {
		return "", nil, fmt.Errorf("--broker-dynsec-login %s: want one line username:password (the dynamic security admin, as `mosquitto_ctrl dynsec init` made it)", path)
	}
	return u, []byte(p), nil
}

// Dial connects to the broker as the plugin's admin and subscribes to
// its responses; ctx bounds that wait, not the connection, which lives
// (reconnecting) until Close.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.BrokerURL == nil {
		return nil, errors.New("dynsec: BrokerURL is required")
	}
	if cfg.Username == "" {
		return nil, errors.New("dynsec: the admin's Username is required (--broker-dynsec-login)")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "fleet-dynsec-" + randomHex(6)
	}
	c := newClient(cfg, nil)
	up := make(chan error, 1)
	var once sync.Once
	u := *cfg.BrokerURL
	if u.Scheme == "tcp" {
		u.Scheme = "mqtt"
	}
	cm, err := autopaho.NewConnection(context.WithoutCancel(ctx), autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              backoff.Policy{Base: 200 * time.Millisecond, Max: 5 * time.Second}.Delay,
		TlsCfg:                        cfg.TLS,
		ConnectUsername:               cfg.Username,
		ConnectPassword:               cfg.Password,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go func() {
				sctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
				defer cancel()
				_, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: ResponseTopic, QoS: 1}}})
				if err != nil {
					c.log.Warn("dynsec: subscribe to the plugin's responses", "topic", ResponseTopic, "err", err)
				}
				once.Do(func() { up <- err })
			}()
		},
		OnConnectError: func(err error) { c.log.Warn("dynsec: connect", "broker", cfg.BrokerURL.Redacted(), "err", err) },
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				if pr.Packet.Topic == ResponseTopic {
					c.receive(pr.Packet.Payload)
				}
				return true, nil
			}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("dynsec: %w", err)
	}
	c.pub, c.stop = pahoPublisher{cm}, func() error { return cm.Disconnect(context.Background()) }
	select {
	case err := <-up:
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("dynsec: subscribe to %s (does the admin's role allow $CONTROL/dynamic-security/#?): %w", ResponseTopic, err)
		}
	case <-ctx.Done():
		c.stop()
		return nil, fmt.Errorf("dynsec: connect to %s as %q (check --broker and --broker-dynsec-login): %w", cfg.BrokerURL.Redacted(), cfg.Username, ctx.Err())
	}
	return c, nil
}

func newClient(cfg Config, pub publisher) *Client {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: cfg.Logger, pub: pub, stop: func() error { return nil }, waiters: map[string]chan Response{}}
}

type pahoPublisher struct{ cm *autopaho.ConnectionManager }

func (p pahoPublisher) Publish(ctx context.Context, payload []byte) error {
	if err := p.cm.AwaitConnection(ctx); err != nil {
		return err
	}
	_, err := p.cm.Publish(ctx, &paho.Publish{Topic: CommandTopic, QoS: 1, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: "application/json"}})
	return err
}

// Close disconnects.
func (c *Client) Close() error { return c.stop() }

// Do sends cmds in one message and returns their responses in the same
// order, or the first command the plugin refused as an *Error (after all
// have been answered). Each exchange is bounded by Config.Timeout.
func (c *Client) Do(ctx context.Context, cmds ...Command) ([]Response, error) {
	resps, err := c.exchange(ctx, cmds)
	if err != nil {
		return resps, err
	}
	for i, r := range resps {
		if r.Error != "" {
			return resps, &Error{Command: cmds[i].Command, Target: target(cmds[i]), Text: r.Error}
		}
	}
	return resps, nil
}

// exchange sends cmds and waits for every response, whatever it says.
func (c *Client) exchange(ctx context.Context, cmds []Command) ([]Response, error) {
	if len(cmds) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	ids := make([]string, len(cmds))
	chans := make([]chan Response, len(cmds))
	c.mu.Lock()
	for i := range cmds {
		ids[i] = randomHex(8)
		chans[i] = make(chan Response, 1)
		c.waiters[ids[i]] = chans[i]
		cmds[i].CorrelationData = ids[i]
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, id := range ids {
			delete(c.waiters, id)
		}
		c.mu.Unlock()
	}()
	payload, err := json.Marshal(struct {
		Commands []Command `json:"commands"`
	}{cmds})
	if err != nil {
		return nil, fmt.Errorf("dynsec %s: %w", cmds[0].Command, err)
	}
	if err := c.pub.Publish(ctx, payload); err != nil {
		return nil, fmt.Errorf("dynsec %s %s: publish on %s: %w", cmds[0].Command, target(cmds[0]), CommandTopic, err)
	}
	resps := make([]Response, len(cmds))
	for i, ch := range chans {
		select {
		case resps[i] = <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("dynsec %s %s: no response from Mosquitto on %s within %v (is the dynamic security plugin loaded, and may %q use $CONTROL/dynamic-security/#?): %w",
				cmds[i].Command, target(cmds[i]), ResponseTopic, c.cfg.Timeout, c.cfg.Username, ctx.Err())
		}
	}
	return resps, nil
}

// receive hands each response of a message to the command waiting for it.
func (c *Client) receive(payload []byte) {
	var msg struct {
		Responses []Response `json:"responses"`
	}
	if err := json.Unmarshal(payload, &msg); err != nil {
		c.log.Warn("dynsec: response does not decode", "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range msg.Responses {
		if ch, ok := c.waiters[r.CorrelationData]; ok {
			ch <- r
			delete(c.waiters, r.CorrelationData)
		}
	}
}

func target(cmd Command) string {
	if cmd.Username != "" {
		return cmd.Username
	}
	return cmd.RoleName
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
