package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// errStall is a request cancelled because no byte came for StallTimeout.
var errStall = errors.New("stalled")

// blob is the download of one blob into the store.
type blob struct {
	f      *Fetcher
	log    *slog.Logger
	client *http.Client
	repo   name.Repository
	desc   v1.Descriptor
	prog   *progress
	// limits are the bandwidth caps this download pays (nil ones are
	// unlimited); fetched counts the bytes it downloads.
	limits  []*limiter
	fetched *atomic.Int64
}

// fetch downloads the blob unless the store has it, resuming from its partial
// file, retrying with back-off until ctx ends, and starting again from zero
// when the bytes fail their digest (at most MaxCorrupt times).
func (b *blob) fetch(ctx context.Context) error {
	st := b.f.cfg.Store
	if st.Has(b.desc.Digest) {
		b.prog.add(b.desc.Size)
		return nil
	}
	unlock, err := st.lock(ctx, b.desc.Digest)
	if err != nil {
		return err
	}
	defer unlock()
	if st.Has(b.desc.Digest) {
		b.prog.add(b.desc.Size)
		return nil
	}
	for corrupt := 0; ; corrupt++ {
		err := b.fetchOnce(ctx)
		if !errors.Is(err, ErrDigestMismatch) {
			return err
		}
		if corrupt+1 >= b.f.cfg.MaxCorrupt {
			return fmt.Errorf("blob %s failed its digest %d times: %w", b.desc.Digest, corrupt+1, err)
		}
		b.log.Warn("blob failed its digest; fetching it again from zero", "err", err)
	}
}

// fetchOnce downloads into the partial file until it holds Size bytes, then
// commits it.
func (b *blob) fetchOnce(ctx context.Context) error {
	st := b.f.cfg.Store
	p, err := st.openPartial(b.desc.Digest)
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.desc.Digest, err)
	}
	if p.n > b.desc.Size {
		if err := p.reset(); err != nil {
			p.close()
			return fmt.Errorf("blob %s: %w", b.desc.Digest, err)
		}
	}
	if p.n > 0 {
		b.log.Info("resuming blob", "offset", p.n, "size", b.desc.Size)
	}
	b.prog.add(p.n)
	var last error
	for n := 0; p.n < b.desc.Size; n++ {
		if err := waitCtx(ctx, b.f.cfg.Backoff.Delay(n)); err != nil {
			p.close()
			if last != nil {
				err = fmt.Errorf("%w (last try: %w)", err, last)
			}
			return fmt.Errorf("blob %s: %w", b.desc.Digest, err)
		}
		before := p.n
		err := b.download(ctx, p)
		last = err
		if err == nil || errors.Is(err, ErrDigestMismatch) || permanent(err) || ctx.Err() != nil {
			if err != nil {
				p.close()
				return fmt.Errorf("blob %s: %w", b.desc.Digest, err)
			}
			continue
		}
		if p.n > before {
			n = 0 // the link moves: reconnect after the shortest back-off
		}
		b.log.Warn("blob download interrupted; resuming", "offset", p.n, "size", b.desc.Size, "err", err)
	}
	if err := st.commit(p, b.desc.Digest, b.desc.Size); err != nil {
		b.prog.add(-p.n)
		return err
	}
	return nil
}

// download makes one GET of the blob from the partial file's size on and
// appends what arrives. A registry that answers a Range request with the
// whole blob (200) restarts the partial file from zero.
func (b *blob) download(ctx context.Context, p *partial) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	timer := time.AfterFunc(b.f.cfg.StallTimeout, func() { stalled.Store(true); cancel() })
	defer timer.Stop()

	resp, err := b.get(ctx, p.n)
	if err != nil {
		return stallErr(&stalled, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		if err := checkContentRange(resp.Header.Get("Content-Range"), p.n); err != nil {
			return err
		}
	case resp.StatusCode == http.StatusOK:
		if p.n > 0 {
			b.log.Warn("registry ignored the Range request; restarting the blob from zero", "discarded", p.n)
			b.prog.add(-p.n)
			if err := p.reset(); err != nil {
				return err
			}
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		b.log.Warn("registry refused the Range request; restarting the blob from zero", "discarded", p.n)
		b.prog.add(-p.n)
		if err := p.reset(); err != nil {
			return err
		}
		return fmt.Errorf("registry refused bytes=%d-: %s", p.n, resp.Status)
	default:
		return transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
	}
	return stallErr(&stalled, b.copy(ctx, p, resp.Body, timer))
}

// get sends the GET of the blob, with a Range from offset when offset > 0.
// The end of the range is explicit (bytes=N-end) because some registries
// (go-containerregistry's own) refuse an open range.
func (b *blob) get(ctx context.Context, offset int64) (*http.Response, error) {
	u := url.URL{
		Scheme: b.repo.Scheme(),
		Host:   b.repo.RegistryStr(),
		Path:   fmt.Sprintf("/v2/%s/blobs/%s", b.repo.RepositoryStr(), b.desc.Digest),
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, b.desc.Size-1))
	}
	return b.client.Do(req)
}

// copy appends the body to the partial file, paying the bandwidth limiter,
// re-arming the stall timer on each byte, and refusing more than Size bytes.
func (b *blob) copy(ctx context.Context, p *partial, body io.Reader, timer *time.Timer) error {
	size := 32 << 10
	for _, l := range b.limits {
		size = l.chunk(size)
	}
	buf := make([]byte, size)
	for {
		timer.Reset(b.f.cfg.StallTimeout)
		n, err := body.Read(buf)
		if n > 0 {
			if p.n+int64(n) > b.desc.Size {
				b.prog.add(-p.n)
				p.reset()
				return fmt.Errorf("registry sent more than %d bytes: %w", b.desc.Size, ErrDigestMismatch)
			}
			if _, werr := p.Write(buf[:n]); werr != nil {
				return fmt.Errorf("writing partial blob: %w", werr)
			}
			b.prog.add(int64(n))
			b.fetched.Add(int64(n))
			timer.Stop()
			for _, l := range b.limits {
				if lerr := l.wait(ctx, n); lerr != nil {
					return lerr
				}
			}
		}
		if err == io.EOF {
			if p.n < b.desc.Size {
				return io.ErrUnexpectedEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func stallErr(stalled *atomic.Bool, err error) error {
	if err != nil && stalled.Load() {
		return fmt.Errorf("no byte for the stall timeout: %w (%w)", errStall, err)
	}
	return err
}

// checkContentRange checks that a 206 answer starts where the partial file
// ends.
func checkContentRange(cr string, offset int64) error {
	var start, end, size int64
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &start, &end, &size); err != nil {
		return fmt.Errorf("206 answer with Content-Range %q: %w", cr, err)
	}
	if start != offset {
		return fmt.Errorf("206 answer starts at byte %d, want %d", start, offset)
	}
	return nil
}
