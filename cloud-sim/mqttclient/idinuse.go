package mqttclient

import (
	"context"
	"slices"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// The embedded broker (mochi-mqtt) answers a SUBSCRIBE or UNSUBSCRIBE
// whose packet id equals one of its own QoS 1 publications to this client
// still awaiting PUBACK with 0x91 (packet identifier in use), although the
// two directions' ids are independent in MQTT. Both sides count ids up
// from 1, so a console that subscribes while replies and chunks flow to it
// (a logs stream after another) met it every few requests. The next try
// takes the next id; the broker's publication is acknowledged within
// milliseconds.
const (
	idInUse    byte = 0x91 // packets.SubackPacketIdentifierinuse, UnsubackPacketIdentifierInUse
	inUseTries      = 8
	inUseWait       = 5 * time.Millisecond
)

// retryInUse runs op until its reason codes hold no 0x91, at most
// inUseTries times, and returns the last outcome.
func retryInUse(ctx context.Context, op func() (reasons []byte, err error)) error {
	wait := inUseWait
	for try := 1; ; try++ {
		reasons, err := op()
		if err == nil || try == inUseTries || !slices.Contains(reasons, idInUse) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// subscribeRetry subscribes cm to subs, trying again while the broker answers
// 0x91; it returns the last SUBACK (nil when none came) and error.
func subscribeRetry(ctx context.Context, cm *autopaho.ConnectionManager, subs []paho.SubscribeOptions) (*paho.Suback, error) {
	var sa *paho.Suback
	err := retryInUse(ctx, func() ([]byte, error) {
		var err error
		if sa, err = cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs}); sa == nil {
			return nil, err
		}
		return sa.Reasons, err
	})
	return sa, err
}

// unsubscribeRetry unsubscribes cm from topics, trying again while the broker
// answers 0x91.
func unsubscribeRetry(ctx context.Context, cm *autopaho.ConnectionManager, topics []string) error {
	return retryInUse(ctx, func() ([]byte, error) {
		ua, err := cm.Unsubscribe(ctx, &paho.Unsubscribe{Topics: topics})
		if ua == nil {
			return nil, err
		}
		return ua.Reasons, err
	})
}
