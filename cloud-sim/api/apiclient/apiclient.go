// Package apiclient calls the fleet controller's HTTP API: the CLI's
// verbs, the web console and the tests all go through it, with the wire
// types of package api.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// Client calls the API.
type Client struct {
	Base  string // e.g. http://127.0.0.1:8080
	Token string
	// NoTokenHelp, with no Token, says where the token was looked for; a
	// 401 reports it.
	NoTokenHelp string
	HTTP        *http.Client
}

// APIError is an error response of the API.
type APIError struct {
	Status int
	Body   api.Error
}

func (e *APIError) Error() string {
	if e.Body.Field != "" && !strings.HasPrefix(e.Body.Error, e.Body.Field) {
		return fmt.Sprintf("%s (%s): %s", e.Body.Code, e.Body.Field, e.Body.Error)
	}
	return fmt.Sprintf("%s: %s", e.Body.Code, e.Body.Error)
}

// Do sends a request with body (JSON-encoded unless nil) and decodes the
// response into out (unless nil); raw, if not nil, receives the body.
func (c *Client) Do(ctx context.Context, method, path string, body, out any, raw *[]byte) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Base, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: api.MaxWait + time.Minute}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cloud-sim API at %s: %w (is `cloud-sim serve` running? set --api or CLOUD_SIM_API)", c.Base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, &e.Body) != nil || e.Body.Error == "" {
			e.Body.Error, e.Body.Code = strings.TrimSpace(string(data)), http.StatusText(resp.StatusCode)
		}
		if resp.StatusCode == http.StatusUnauthorized && c.Token == "" && c.NoTokenHelp != "" {
			e.Body.Error = c.NoTokenHelp
		}
		return e
	}
	if raw != nil {
		*raw = data
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}
