package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// DynsecPlugin is where Debian's mosquitto package installs the dynamic
// security plugin.
const DynsecPlugin = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"

// DynsecMosquitto is a Mosquitto that loads the dynamic security plugin.
type DynsecMosquitto struct {
	Broker
	// AdminUser and AdminPassword are the plugin's admin login; LoginFile
	// holds it as cloud-sim's --broker-dynsec-login reads it.
	AdminUser, AdminPassword, LoginFile string
	// JSON is the plugin's state file.
	JSON string
}

// MosquittoDynsec starts a real Mosquitto on a free loopback port with the
// dynamic security plugin, its state initialised by `mosquitto_ctrl dynsec
// init` with an admin login, and no anonymous access. Skipped (failed
// under CI) as Mosquitto is.
func MosquittoDynsec(t testing.TB) *DynsecMosquitto {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err == nil {
		_, err = os.Stat(DynsecPlugin)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mosquitto with its dynamic security plugin not installed; .ci/run installs it: %v", err)
		}
		t.Skip("mosquitto with its dynamic security plugin not installed (apt-get install -y mosquitto)")
	}
	dir := t.TempDir()
	d := &DynsecMosquitto{AdminUser: "admin", AdminPassword: "admin-" + filepath.Base(dir), JSON: filepath.Join(dir, "dynamic-security.json"),
		LoginFile: filepath.Join(dir, "dynsec-login")}
	if out, err := exec.Command("mosquitto_ctrl", "dynsec", "init", d.JSON, d.AdminUser, d.AdminPassword).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_ctrl dynsec init: %v\n%s", err, out)
	}
	if err := os.WriteFile(d.LoginFile, []byte(d.AdminUser+":"+d.AdminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Broker = startMosquitto(t, bin, dir, func(port string) string {
		return fmt.Sprintf(`per_listener_settings false
listener %s 127.0.0.1
allow_anonymous false
persistence true
persistence_location %s/
autosave_interval 0
set_tcp_nodelay true
user root
plugin %s
plugin_opt_config_file %s
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
`, port, dir, DynsecPlugin, d.JSON)
	}, FreeAddr)
	return d
}
