package gateway

import (
	"testing"

	"github.com/fleet-agent/fleet/agent/command"
)

// TestMaxPacketSize: the Maximum Packet Size advertised in CONNECT is
// --max-payload plus the headroom for the topic and properties.
func TestMaxPacketSize(t *testing.T) {
	for _, tt := range []struct {
		maxPayload int
		want       uint32
	}{
		{0, command.DefaultMaxPayload + packetHeadroom},
		{1024, 1024 + packetHeadroom},
		{1 << 30, 1<<28 - 1},
	} {
		if got := maxPacketSize(tt.maxPayload); got != tt.want {
			t.Errorf("maxPacketSize(%d) = %d, want %d", tt.maxPayload, got, tt.want)
		}
	}
}
