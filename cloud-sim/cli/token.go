package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// DefaultDataDir is serve's default --data, where the CLI looks for the
// API token serve made.
const DefaultDataDir = "cloud-sim-data"

// FindToken returns the API token and where it came from: the file
// tokenFile (--api-token-file), else $CLOUD_SIM_TOKEN, else the api-token
// file serve made in dataDir (--data) when there is one. With none it
// returns "" and what it looked for, for the error a 401 reports.
func FindToken(tokenFile, dataDir string, getenv func(string) string) (token, source string, err error) {
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", "", fmt.Errorf("--api-token-file: %w", err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return "", "", fmt.Errorf("--api-token-file: %s is empty", tokenFile)
		}
		return token, tokenFile, nil
	}
	if token = strings.TrimSpace(getenv("CLOUD_SIM_TOKEN")); token != "" {
		return token, "CLOUD_SIM_TOKEN", nil
	}
	file := filepath.Join(dataDir, api.TokenFile)
	b, err := os.ReadFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Sprintf("no API token: no --api-token-file, CLOUD_SIM_TOKEN is unset, and there is no %s (pass --data with serve's data directory)", file), nil
	case err != nil:
		return "", "", fmt.Errorf("--data: API token file: %w (or pass --api-token-file, CLOUD_SIM_TOKEN)", err)
	}
	if token = strings.TrimSpace(string(b)); token == "" {
		return "", "", fmt.Errorf("--data: API token file %s is empty", file)
	}
	return token, file, nil
}
