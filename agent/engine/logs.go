package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"
)

// LogSource is a container whose output a logs stream reads.
type LogSource struct {
	ContainerID string
	Service     string
	Revision    int64
	Running     bool
}

// LogOptions selects a container's output.
type LogOptions struct {
	// Tail is how many of the last lines to send; negative: all of them.
	Tail int
	// Since, when set, keeps only lines written at or after it.
	Since time.Time
	// Follow keeps the stream open for new lines until the container stops
	// or ctx ends.
	Follow bool
}

// LogEntry is one line of a container's output, without its newline, or a
// piece of a line longer than MaxLogPiece (Partial: the line goes on in the
// next entry of the same stream, which has no timestamp of its own).
type LogEntry struct {
	Time    time.Time
	Stderr  bool
	Text    []byte
	Partial bool
}

// MaxLogPiece bounds what ContainerLogs holds of one line before it emits
// it as a partial entry (cut after a whole UTF-8 character).
const MaxLogPiece = 16 << 10

// LogSources returns the current container of each service of deployment:
// of several (an update in progress, a revision kept), the highest
// revision, a running one first. None: the deployment has no container.
func (d *Docker) LogSources(ctx context.Context, deployment string) ([]LogSource, error) {
	cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", LabelOwner+"="+d.owner),
		filters.Arg("label", LabelDeployment+"="+deployment),
	)})
	if err != nil {
		return nil, mapErr(err)
	}
	all := make([]LogSource, 0, len(cs))
	for _, c := range cs {
		rev, _ := strconv.ParseInt(c.Labels[LabelRevision], 10, 64)
		svc := c.Labels[LabelService] // none: a single container's, named after the deployment
		if svc == "" {
			svc = deployment
		}
		all = append(all, LogSource{ContainerID: c.ID, Service: svc, Revision: rev, Running: c.State == "running"})
	}
	return CurrentSources(all), nil
}

// CurrentSources keeps, of each service's containers, the one of the
// highest revision (a running one first), ordered by service.
func CurrentSources(all []LogSource) []LogSource {
	best := map[string]LogSource{}
	for _, s := range all {
		b, ok := best[s.Service]
		if !ok || s.Revision > b.Revision || s.Revision == b.Revision && s.Running && !b.Running {
			best[s.Service] = s
		}
	}
	out := make([]LogSource, 0, len(best))
	for _, s := range best {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b LogSource) int { return strings.Compare(a.Service, b.Service) })
	return out
}

// ContainerLogs streams container id's output to emit, stdout and stderr
// apart, each line with the time the engine recorded it. It returns nil
// when the output ends (without Follow: all of it sent; with Follow: the
// container stopped), ctx's error when ctx ends, emit's error when emit
// fails.
func (d *Docker) ContainerLogs(ctx context.Context, id string, o LogOptions, emit func(LogEntry) error) error {
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Timestamps: true, Follow: o.Follow, Tail: "all"}
	if o.Tail >= 0 {
		opts.Tail = strconv.Itoa(o.Tail)
	}
	if !o.Since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", o.Since.Unix(), o.Since.Nanosecond())
	}
	rc, err := d.cli.ContainerLogs(ctx, id, opts)
	if err != nil {
		return mapErr(err)
	}
	defer rc.Close()
	stop := context.AfterFunc(ctx, func() { rc.Close() })
	defer stop()
	out, errOut := &lineWriter{emit: emit}, &lineWriter{emit: emit, stderr: true}
	_, err = stdcopy.StdCopy(out, errOut, rc)
	if err == nil {
		err = errors.Join(out.flush(), errOut.flush())
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read logs of container %s: %w", id, mapErr(err))
	}
	return nil
}

// enginePiece is the size of the pieces the engine stores a longer line in:
// each piece comes with a timestamp of its own, which is taken out.
const enginePiece = 16 << 10

// maxTimestamp bounds the engine's timestamp prefix ("2006-01-02T15:04:05.999999999Z07:00").
const maxTimestamp = 64

// lineWriter splits one demultiplexed stream into entries: each line starts
// with the engine's RFC 3339 timestamp and a space, and so does each piece
// after the first of a line over enginePiece bytes.
type lineWriter struct {
	emit    func(LogEntry) error
	stderr  bool
	pending []byte    // bytes not parsed yet
	line    []byte    // the current line's text
	t       time.Time // its timestamp
	started bool      // the current line's timestamp was taken
	piece   int       // text bytes since the last timestamp
	cont    bool      // line continues a partial entry
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.pending = append(w.pending, p...)
	for len(w.pending) > 0 {
		if !w.started || w.piece == enginePiece {
			if !w.timestamp(false) {
				break
			}
			continue
		}
		nl := bytes.IndexByte(w.pending, '\n')
		end := nl
		if nl < 0 {
			end = len(w.pending)
		}
		end = min(end, enginePiece-w.piece)
		if end > 0 && len(w.line) >= MaxLogPiece {
			// More of a full line: emit what it holds (only then, so that a
			// line of exactly MaxLogPiece is not followed by an empty one).
			if err := w.send(true); err != nil {
				return 0, err
			}
			continue
		}
		end = min(end, MaxLogPiece-len(w.line))
		w.line = append(w.line, w.pending[:end]...)
		w.piece += end
		w.pending = w.pending[end:]
		if end == nl {
			w.pending = w.pending[1:]
			if err := w.send(false); err != nil {
				return 0, err
			}
		}
	}
	w.pending = append([]byte(nil), w.pending...) // let the written bytes go
	return len(p), nil
}

// timestamp takes the engine's timestamp at the start of pending, if it is
// there; it reports false when it needs more bytes to tell (not at eof).
func (w *lineWriter) timestamp(eof bool) bool {
	head := w.pending[:min(len(w.pending), maxTimestamp)]
	sp, nl := bytes.IndexByte(head, ' '), bytes.IndexByte(head, '\n')
	if sp < 0 && nl < 0 && len(head) < maxTimestamp && !eof {
		return false
	}
	if sp >= 0 && (nl < 0 || sp < nl) {
		if t, err := time.Parse(time.RFC3339Nano, string(head[:sp])); err == nil {
			if !w.started {
				w.t = t
			}
			w.pending = w.pending[sp+1:]
		}
	}
	w.started, w.piece = true, 0
	return true
}

// flush emits what is left of a last line without a newline.
func (w *lineWriter) flush() error {
	if len(w.pending) > 0 && (!w.started || w.piece == enginePiece) {
		w.timestamp(true)
	}
	w.line = append(w.line, w.pending...)
	w.pending = nil
	if len(w.line) == 0 && !w.started {
		return nil
	}
	return w.send(false)
}

func (w *lineWriter) send(partial bool) error {
	var rest []byte
	if partial {
		cut := runeCut(w.line)
		w.line, rest = w.line[:cut], append([]byte(nil), w.line[cut:]...)
	}
	e := LogEntry{Stderr: w.stderr, Text: w.line, Partial: partial}
	if !w.cont {
		e.Time = w.t
	}
	w.cont, w.line = partial, rest // the entry owns its bytes
	if !partial {
		w.started, w.t = false, time.Time{}
	}
	return w.emit(e)
}

// runeCut is where b may be cut without splitting its last UTF-8
// character: before an incomplete one at its end.
func runeCut(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			break
		}
	}
	return len(b)
}
