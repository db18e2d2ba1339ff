package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/internal/errdefs"
)

// MaxTail is the largest tail of GET …/logs.
const MaxTail = 100_000

// LogLine is the data of an `event: line` of GET …/logs.
type LogLine struct {
	At      time.Time `json:"at"`
	Service string    `json:"service"`
	Stream  string    `json:"stream"`
	Text    string    `json:"text"`
}

// LogDropped is the data of an `event: dropped`: lines dropped at this
// point of the stream, by the gateway's rate limit ("gateway") or by the
// cloud ("cloud": a client reading too slowly, or chunks that never came,
// counted in chunks).
type LogDropped struct {
	By     string `json:"by"`
	Lines  uint64 `json:"lines"`
	Bytes  uint64 `json:"bytes"`
	Chunks uint64 `json:"chunks,omitempty"`
}

// LogEnd is the data of the last event, `event: end`.
type LogEnd struct {
	// Command is the logs command's id (GET /v1/commands/{id}).
	Command string `json:"command"`
	// Reason: COMPLETE, UNTIL, CANCELED, CONTAINER_GONE, ERROR (the
	// gateway's final chunk); SUCCEEDED, FAILED, REJECTED, EXPIRED (its
	// final reply, without a final chunk); TIMEOUT (no answer in time);
	// GATEWAY_OFFLINE (it went offline).
	Reason  string `json:"reason"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// logsRequest reads GET …/logs: service, tail, since and until (a
// duration, back from now for since and ahead for until, or an RFC 3339
// instant), follow.
func logsRequest(r *http.Request, now time.Time) (controller.LogsRequest, error) {
	q := r.URL.Query()
	req := controller.LogsRequest{Tenant: r.PathValue("tenant"), Gateway: r.PathValue("id"), Deployment: r.PathValue("name"), Service: q.Get("service")}
	if s := q.Get("tail"); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n > MaxTail {
			return req, errdefs.Invalid("tail", "%q: give a whole number of lines from 0 to %d (0: the last 100, or all since `since`)", s, MaxTail)
		}
		req.Tail = uint32(n)
	}
	var err error
	if req.Follow, err = boolParam(q, "follow"); err != nil {
		return req, err
	}
	if req.Since, err = instantParam(q, "since", now, -1); err != nil {
		return req, err
	}
	if req.Until, err = instantParam(q, "until", now, 1); err != nil {
		return req, err
	}
	return req, nil
}

func boolParam(q url.Values, name string) (bool, error) {
	s := q.Get(name)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, errdefs.Invalid(name, "%q: give true or false", s)
	}
	return b, nil
}

// instantParam reads a duration (from now, in direction sign) or an RFC
// 3339 instant; the zero time when absent.
func instantParam(q url.Values, name string, now time.Time, sign int) (time.Time, error) {
	s := strings.TrimSpace(q.Get(name))
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(time.Duration(sign) * d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, errdefs.Invalid(name, "%q: give a duration like 10m or 1h30m, or an RFC 3339 instant like 2026-12-01T10:00:00Z", s)
}

// logs streams a deployment's output from one gateway as server-sent
// events: `event: line`, `event: dropped`, and last `event: end`, each
// with its JSON. The client's going away ends the stream, and a follow
// on the gateway (cancel-logs). A comment every 15 s keeps proxies from
// closing a quiet follow. It counts against MaxStreams, as /v1/events.
func (a *api) logs(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		a.fail(w, errors.New("streaming unsupported"))
		return
	}
	req, err := logsRequest(r, time.Now())
	if err != nil {
		a.fail(w, err)
		return
	}
	if !a.streams.acquire() {
		w.Header().Set("Retry-After", "10")
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: fmt.Sprintf("too many event streams (%d) are open: close one, or raise cloud-sim serve --api-max-streams", cap(a.streams)), Code: "NO_SPACE"})
		return
	}
	defer a.streams.release()
	s, err := a.c.Logs(r.Context(), req)
	if err != nil {
		a.fail(w, err)
		return
	}
	defer s.Close()
	holdFor(w, 0)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Fleet-Command", s.ID)
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": logs command %s\n\n", s.ID)
	fl.Flush()
	for {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		evs, err := s.Next(ctx)
		cancel()
		switch {
		case errors.Is(err, io.EOF) || r.Context().Err() != nil:
			return
		case err != nil:
			fmt.Fprint(w, ": keep-alive\n\n")
		}
		for _, ev := range evs {
			writeLogEvent(w, s.ID, ev)
		}
		fl.Flush()
	}
}

func writeLogEvent(w io.Writer, command string, ev controller.LogEvent) {
	var name string
	var data any
	switch {
	case ev.Line != nil:
		l := ev.Line
		name, data = "line", LogLine{At: l.At, Service: l.Service, Stream: l.Stream.String(), Text: l.Text}
	case ev.Dropped != nil:
		d := ev.Dropped
		name, data = "dropped", LogDropped{By: d.By.String(), Lines: d.Lines, Bytes: d.Bytes, Chunks: d.Chunks}
	case ev.End != nil:
		e := ev.End
		name, data = "end", LogEnd{Command: command, Reason: e.Reason, Code: e.Code, Message: e.Message}
	default:
		return
	}
	b, _ := json.Marshal(data)
	fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
}
