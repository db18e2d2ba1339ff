package main

// Before its MODE, testapp does what these variables ask, for the
// application tests (volumes kept across revisions, services reaching each
// other by name):
//
//	FILE_WRITE=path=content   write content to path (creating its directory)
//	FILE_EXPECT=path=content  exit 3 unless path holds exactly content
//	FETCH=url                 GET url until it answers 200 (for up to 30 s),
//	                          else exit 4; /healthz fails until then, since
//	                          the server starts after
//
// The health check (testapp probe) skips them.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		return // the health check, run beside the container's process
	}
	if path, content, ok := strings.Cut(os.Getenv("FILE_WRITE"), "="); ok {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			fail(3, err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			fail(3, err)
		}
	}
	if path, content, ok := strings.Cut(os.Getenv("FILE_EXPECT"), "="); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			fail(3, err)
		}
		if string(b) != content {
			fail(3, fmt.Errorf("%s holds %q, want %q", path, b, content))
		}
	}
	if url := os.Getenv("FETCH"); url != "" {
		if err := fetch(url, 30*time.Second); err != nil {
			fail(4, err)
		}
	}
}

// fetch GETs url until it answers 200 or the time is up.
func fetch(url string, within time.Duration) error {
	end := time.Now().Add(within)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Printf("fetched %s: %s\n", url, body)
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		if time.Now().After(end) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func fail(code int, err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(code)
}
