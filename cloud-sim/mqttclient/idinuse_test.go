package mqttclient

import (
	"context"
	"errors"
	"testing"
)

// TestRetryInUse: a SUBACK or UNSUBACK saying 0x91 (packet identifier in
// use) is tried again, with the next packet id; any other refusal is not.
func TestRetryInUse(t *testing.T) {
	refused := errors.New("failed to subscribe to topic: ")
	tests := []struct {
		name      string
		outcomes  [][]byte // reason codes of each try; the last one repeats
		wantTries int
		wantErr   bool
	}{
		{"granted at once", [][]byte{{0x01}}, 1, false},
		{"in use, then granted", [][]byte{{0x91}, {0x91}, {0x01}}, 3, false},
		{"not authorized is final", [][]byte{{0x87}}, 1, true},
		{"in use every time", [][]byte{{0x91}}, inUseTries, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tries := 0
			err := retryInUse(context.Background(), func() ([]byte, error) {
				r := tt.outcomes[min(tries, len(tt.outcomes)-1)]
				tries++
				if r[0] >= 0x80 {
					return r, refused
				}
				return r, nil
			})
			if tries != tt.wantTries || (err != nil) != tt.wantErr {
				t.Errorf("tries = %d, err = %v; want %d tries, error %v", tries, err, tt.wantTries, tt.wantErr)
			}
		})
	}
}
