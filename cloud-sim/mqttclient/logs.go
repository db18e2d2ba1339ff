package mqttclient

import (
	"context"
	"fmt"

	"github.com/eclipse/paho.golang/paho"
)

// SubscribeLogs subscribes this console's own session (never a shared
// subscription: the chunks must reach the console that asked) to the
// chunks answering logs command requestID of one gateway, at QoS 1. The
// watchers receive them as LogStream publications with a *fleetv1.LogChunk.
// Subscribe before sending the command, so that no chunk is missed; call
// the returned unsubscribe when the stream is over.
func (c *Console) SubscribeLogs(ctx context.Context, tenant, gateway, requestID string) (unsubscribe func(context.Context) error, err error) {
	name := c.cfg.Scheme.LogStream(tenant, gateway, requestID)
	if _, err := subscribeRetry(ctx, c.cm, []paho.SubscribeOptions{{Topic: name, QoS: 1}}); err != nil {
		return nil, fmt.Errorf("mqttclient: subscribe %s: %w", name, err)
	}
	return func(ctx context.Context) error {
		if err := unsubscribeRetry(ctx, c.cm, []string{name}); err != nil {
			return fmt.Errorf("mqttclient: unsubscribe %s: %w", name, err)
		}
		return nil
	}, nil
}
