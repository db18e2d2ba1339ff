package faultproxy

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"sync"
)

// Blobs is an HTTP reverse proxy in front of a container registry's API
// (plain HTTP, as registries on loopback are) that alters its answers to
// GET /v2/<repo>/blobs/<digest>: it flips a byte of a blob, or ignores
// Range requests as some registries and caches do. Serve it with
// net/http (httptest.NewServer) and put a Proxy in front for link faults.
//
// go-containerregistry's registry refuses an open range (bytes=N-), which
// the Docker Engine sends to resume a layer and real registries serve;
// Blobs completes such a range with the blob's size (from a HEAD) so that
// both clients can resume.
type Blobs struct {
	target *url.URL
	rp     *httputil.ReverseProxy

	mu          sync.Mutex // guards the fields below
	ignoreRange bool
	corrupt     map[string]int64 // digest → offset of the byte to flip, once
	corrupted   int
	ranged      int
}

// NewBlobs proxies the registry at target (e.g. "http://127.0.0.1:5000").
func NewBlobs(target string) (*Blobs, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: target %q is not a base URL: %v", target, err)
	}
	b := &Blobs{target: u, corrupt: map[string]int64{}}
	b.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
		},
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	return b, nil
}

// IgnoreRange makes blob requests lose their Range header: the registry
// answers 200 with the whole blob.
func (b *Blobs) IgnoreRange(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ignoreRange = on
}

// CorruptOnce flips the byte at offset of the blob digest ("sha256:…") in
// the first answer that carries it; later answers are intact.
func (b *Blobs) CorruptOnce(digest string, offset int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.corrupt[digest] = offset
}

// Corrupted is how many bytes Blobs has flipped.
func (b *Blobs) Corrupted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.corrupted
}

// RangeRequests is how many blob requests came with a Range header.
func (b *Blobs) RangeRequests() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ranged
}

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/(sha256:[0-9a-f]{64})$`)

func (b *Blobs) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := blobPath.FindStringSubmatch(r.URL.Path)
	if r.Method != http.MethodGet || m == nil {
		b.rp.ServeHTTP(w, r)
		return
	}
	digest := m[1]
	b.mu.Lock()
	ignore := b.ignoreRange
	offset, flip := b.corrupt[digest]
	if r.Header.Get("Range") != "" {
		b.ranged++
	}
	b.mu.Unlock()
	switch rng := r.Header.Get("Range"); {
	case rng == "":
	case ignore:
		r.Header.Del("Range")
	default:
		var start int64
		if _, err := fmt.Sscanf(rng, "bytes=%d-", &start); err == nil && rng == fmt.Sprintf("bytes=%d-", start) {
			if size, ok := b.size(r); ok && start < size {
				r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, size-1))
			}
		}
	}
	if flip {
		w = &flipWriter{ResponseWriter: w, b: b, digest: digest, offset: offset}
	}
	b.rp.ServeHTTP(w, r)
}

// size asks the registry for the size of the blob r asks for.
func (b *Blobs) size(r *http.Request) (int64, bool) {
	u := *b.target
	u.Path = r.URL.Path
	req, err := http.NewRequestWithContext(r.Context(), http.MethodHead, u.String(), nil)
	if err != nil {
		return 0, false
	}
	req.Header.Set("Authorization", r.Header.Get("Authorization"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false
	}
	size, err := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
	return size, err == nil
}

// take claims the pending corruption of digest, if it is still pending.
func (b *Blobs) take(digest string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.corrupt[digest]; !ok {
		return false
	}
	delete(b.corrupt, digest)
	b.corrupted++
	return true
}

// flipWriter flips the byte at offset of the blob as the answer passes.
type flipWriter struct {
	http.ResponseWriter
	b      *Blobs
	digest string
	offset int64
	pos    int64 // offset in the blob of the next byte written
	active bool
}

func (f *flipWriter) WriteHeader(code int) {
	switch code {
	case http.StatusOK:
		f.active = true
	case http.StatusPartialContent:
		var start, end, size int64
		_, err := fmt.Sscanf(f.Header().Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &size)
		f.active, f.pos = err == nil, start
	}
	f.ResponseWriter.WriteHeader(code)
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if f.active && f.offset >= f.pos && f.offset < f.pos+int64(len(p)) && f.b.take(f.digest) {
		q := append([]byte(nil), p...)
		q[f.offset-f.pos] ^= 0xff
		p = q
		f.active = false
	}
	n, err := f.ResponseWriter.Write(p)
	f.pos += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController flush the stream.
func (f *flipWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }
