package apiclient

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Events GETs path, a stream of server-sent events, and calls fn with
// each event's name and data until the stream ends, fn returns an error
// (returned), or ctx ends (ctx's error): ending ctx closes the request,
// which is how a client tells the API it went away. An error response is
// an *APIError, as with Do.
func (c *Client) Events(ctx context.Context, path string, fn func(name string, data []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(c.Base, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{} // a stream has no overall timeout; ctx ends it
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("cloud-sim API at %s: %w (is `cloud-sim serve` running? set --api or CLOUD_SIM_API)", c.Base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, &e.Body) != nil || e.Body.Error == "" {
			e.Body.Error, e.Body.Code = strings.TrimSpace(string(data)), http.StatusText(resp.StatusCode)
		}
		if resp.StatusCode == http.StatusUnauthorized && c.Token == "" && c.NoTokenHelp != "" {
			e.Body.Error = c.NoTokenHelp
		}
		return e
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var name string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event:"):
			name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")...)
		case line == "":
			if name != "" || len(data) > 0 {
				if err := fn(name, data); err != nil {
					return err
				}
			}
			name, data = "", nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cloud-sim API: event stream: %w", err)
	}
	return nil
}
