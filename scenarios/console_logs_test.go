package scenarios

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestConsoleLogs: the gateway page's logs panel shows a deployment's
// tail in order, follows it live, and its Stop button ends the follow
// on the gateway (cancel-logs); a bad value is refused next to its
// field. The gateway is a LogsGateway logged in through the embedded
// broker's ACL, publishing on its own logs topics.
func TestConsoleLogs(t *testing.T) {
	chromium(t)
	c := startCloud(t, 0)
	pw, err := c.Controller.Provision(context.Background(), "acme", "gw-1", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	lines := make([]string, 10)
	for i := range lines {
		lines[i] = fmt.Sprintf("line %d", i+1)
	}
	gw := mqttclienttest.StartLogsGateway(t, "mqtt://"+c.mqtt, pw, &mqttclienttest.LogsGateway{Tenant: "acme", ID: "gw-1", Announce: true,
		Lines: map[string][]string{"web": lines}})
	testenv.Eventually(t, "acme/gw-1 online with web", func() bool {
		g, ok := c.Controller.Gateway("acme", "gw-1")
		return ok && g.Online && g.Deployments["web"] != nil
	})
	b := openConsole(t, c)
	b.run("open the gateway page", chromedp.Navigate(b.base+"/gateways/acme/gw-1"), chromedp.WaitVisible(chromedp.CSS(`#deployments`)))

	b.click("the logs of web", `button.logs-open[data-logs="web"]`)
	b.eventually("the tail's end", "#logs-status", func(s string) bool { return strings.Contains(s, "Ended: COMPLETE") })
	out := b.text("#logs-output")
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "] stdout "); i >= 0 {
			got = append(got, l[i+len("] stdout "):])
		} else if i := strings.Index(l, "] stderr "); i >= 0 {
			got = append(got, l[i+len("] stderr "):])
		}
	}
	if strings.Join(got, ",") != strings.Join(lines, ",") || !strings.Contains(out, "[web]") {
		t.Errorf("the panel shows %q, want the lines %q in order", out, lines)
	}

	b.run("follow the last 2 lines", liveSet("#logs-tail", "2"),
		inPage("tick follow", `(() => { const e = document.querySelector("#logs-follow"); if (!e) return false; e.checked = true; return true; })()`),
		liveClick("#logs-show"))
	b.eventually("followed lines", "#logs-output", func(s string) bool { return strings.Contains(s, "follow 3") && !strings.Contains(s, "line 8") })
	if gw.Following() != 1 {
		t.Fatalf("the gateway follows %d streams, want 1", gw.Following())
	}
	b.click("stop", "#logs-stop")
	testenv.Eventually(t, "cancel-logs at the gateway", func() bool {
		for _, cmd := range gw.Commands() {
			if cmd.GetCancelLogs() != nil {
				return true
			}
		}
		return false
	})
	testenv.Eventually(t, "the follow ended on the gateway", func() bool { return gw.Following() == 0 })
	if s := b.text("#logs-status"); s != "Stopped." {
		t.Errorf("status %q after Stop", s)
	}

	b.run("a bad since", liveSet("#logs-since", "yesterday"), liveClick("#logs-show"))
	if msg := b.eventually("the error next to since", "#logs-form .field-error", func(s string) bool { return s != "" }); !strings.Contains(msg, "Since") {
		t.Errorf("error %q does not name since", msg)
	}
}
