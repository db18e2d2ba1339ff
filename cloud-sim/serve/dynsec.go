package serve

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/dynsec"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// startDynsec logs in to the external broker's dynamic security plugin as
// its admin (cfg.BrokerDynsecLogin), for the identities to keep their
// copy there; nil without the flag.
func (s *Server) startDynsec(ctx context.Context, cfg Config) (*dynsec.Client, error) {
	if cfg.BrokerDynsecLogin == "" {
		return nil, nil
	}
	if cfg.BrokerURL == "" {
		return nil, errors.New("serve: --broker-dynsec-login is for an external Mosquitto (--broker mqtt://…); the embedded broker keeps the identities itself")
	}
	u, err := url.Parse(cfg.BrokerURL)
	if err != nil {
		return nil, fmt.Errorf("serve: --broker %q: %w", cfg.BrokerURL, err)
	}
	user, pw, err := dynsec.ReadLogin(cfg.BrokerDynsecLogin)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	tc, err := controllerTLS(cfg)
	if err != nil {
		return nil, err
	}
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := dynsec.Dial(dialCtx, dynsec.Config{BrokerURL: u, TLS: tc, Username: user, Password: pw, Scheme: cfg.Scheme,
		Logger: cfg.Logger.With("component", "dynsec")})
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	s.closers = append(s.closers, c.Close)
	return c, nil
}

// reconcileDynsec makes the broker's gateway clients the identities'. What
// it cannot do is logged as an error and the start goes on: the broker
// still refuses gateways it does not know.
func reconcileDynsec(ctx context.Context, cfg Config, c *dynsec.Client, ids *identity.Identities, store *state.Store) {
	all := ids.All()
	want := make([]dynsec.Gateway, len(all))
	for i, d := range all {
		want[i] = dynsec.Gateway{Tenant: d.Tenant, ID: d.ID, Groups: d.Groups}
	}
	// A client not in want is looked up in the store before it is
	// deleted: another replica may have provisioned it since ids loaded.
	// When the store cannot tell, the client is kept.
	provisioned := func(ctx context.Context, g dynsec.Gateway) bool {
		var d state.Device
		return !errors.Is(store.Get(ctx, state.Devices, state.Key(g.Tenant, g.ID), &d), state.ErrNotFound)
	}
	if _, err := c.Reconcile(ctx, want, provisioned); err != nil {
		cfg.Logger.Error("Mosquitto's gateway clients differ from the cloud's identities", "err", err)
	}
}
