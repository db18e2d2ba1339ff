package faultproxy_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/fleet-agent/fleet/internal/faultproxy"
)

// blobRegistry is go-containerregistry's registry holding data as a blob
// of team/app behind a Blobs; it returns the Blobs, its URL and the blob's
// URL path.
func blobRegistry(t *testing.T, data []byte) (*faultproxy.Blobs, string, string) {
	t.Helper()
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	repo, err := name.NewRepository(strings.TrimPrefix(reg.URL, "http://")+"/team/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	l := static.NewLayer(data, types.OCIUncompressedLayer)
	if err := remote.WriteLayer(repo, l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	b, err := faultproxy.NewBlobs(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	return b, srv.URL, "/v2/team/app/blobs/" + d.String()
}

func get(t *testing.T, url, rng string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestBlobsCorruptOnce(t *testing.T) {
	data := random(200_000)
	flipped := func(at int) []byte {
		b := bytes.Clone(data)
		b[at] ^= 0xff
		return b
	}
	tests := []struct {
		name   string
		offset int64
		rng    string
		start  int // of the answer in the blob
		want   []byte
	}{
		{"whole blob", 150_000, "", 0, flipped(150_000)},
		{"ranged answer covering the byte", 150_000, "bytes=100000-199999", 100_000, flipped(150_000)},
		{"open range", 150_000, "bytes=100000-", 100_000, flipped(150_000)},
		{"ranged answer after the byte", 50_000, "bytes=100000-199999", 100_000, data},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, url, path := blobRegistry(t, data)
			b.CorruptOnce(strings.TrimPrefix(path, "/v2/team/app/blobs/"), tt.offset)
			code, body := get(t, url+path, tt.rng)
			if code != http.StatusOK && code != http.StatusPartialContent {
				t.Fatalf("status %d: %s", code, body)
			}
			if !bytes.Equal(body, tt.want[tt.start:]) {
				t.Errorf("first answer differs from the expected bytes (flipped at %d)", tt.offset)
			}
			wantFlips := 0
			if !bytes.Equal(tt.want, data) {
				wantFlips = 1
			}
			if b.Corrupted() != wantFlips {
				t.Errorf("Corrupted = %d, want %d", b.Corrupted(), wantFlips)
			}
			if _, body := get(t, url+path, ""); wantFlips == 1 && !bytes.Equal(body, data) {
				t.Errorf("second answer is corrupt too; want it intact")
			}
		})
	}
}

func TestBlobsRange(t *testing.T) {
	data := random(100_000)
	tests := []struct {
		ignore   bool
		rng      string
		wantCode int
		wantFrom int
	}{
		{false, "bytes=10-99999", http.StatusPartialContent, 10},
		{false, "bytes=4096-", http.StatusPartialContent, 4096},
		{true, "bytes=4096-99999", http.StatusOK, 0},
		{true, "bytes=4096-", http.StatusOK, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("ignore=%v %s", tt.ignore, tt.rng), func(t *testing.T) {
			b, url, path := blobRegistry(t, data)
			b.IgnoreRange(tt.ignore)
			code, body := get(t, url+path, tt.rng)
			if code != tt.wantCode || !bytes.Equal(body, data[tt.wantFrom:]) {
				t.Errorf("GET with %s: status %d, %d bytes; want %d with the blob from byte %d", tt.rng, code, len(body), tt.wantCode, tt.wantFrom)
			}
			if b.RangeRequests() != 1 {
				t.Errorf("RangeRequests = %d, want 1", b.RangeRequests())
			}
		})
	}
}
