package scenarios

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// browser is a headless Chromium logged in to a cloud's console.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string // http://127.0.0.1:port
}

// chromium finds the browser: Debian's chromium, else Chrome. Without one
// the test is skipped, except under CI (CI set), where .ci/run installs it.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not installed; .ci/run installs it")
	}
	t.Skip("chromium not installed (apt-get install -y chromium)")
	return ""
}

// openBrowser starts a headless Chromium for the console of c, not yet
// logged in. It is closed at cleanup.
func openBrowser(t *testing.T, c *cloud) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // tests run as root in CI containers
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1400, 1000),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, base: strings.TrimRight(c.APIURL, "/")}
}

// openConsole starts a browser and logs in to c's console with its API
// token through the login form.
func openConsole(t *testing.T, c *cloud) *browser {
	t.Helper()
	b := openBrowser(t, c)
	b.run("log in",
		chromedp.Navigate(b.base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), c.APIToken),
		chromedp.Submit(chromedp.CSS(`#token`)),
		// The page after the login, not the login page: a navigation
		// racing the login's POST fails with net::ERR_ABORTED.
		chromedp.WaitNotPresent(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`nav[aria-label="Main"]`)),
	)
	return b
}

// run runs steps with a deadline, failing the test with what on error.
func (b *browser) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, testenv.Timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// value runs one action that returns a value, with a deadline.
func value[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, testenv.Timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// text returns the text of the first visible element the CSS selector sel
// matches. A live page may replace the element between its lookup and the
// read ("No node with given id found": TestConsoleLogs failed so under
// make test's load); it is then read again, until the deadline.
func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, testenv.Timeout)
	defer cancel()
	for {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
		if err == nil {
			return strings.TrimSpace(s)
		}
		if !strings.Contains(err.Error(), "No node with given id") || ctx.Err() != nil {
			b.t.Fatalf("browser: read %s: %v", sel, err)
		}
	}
}

// eventually polls the text of the CSS selector sel until ok(text) or
// the deadline: live pages change without a reload.
func (b *browser) eventually(what, sel string, ok func(string) bool) string {
	b.t.Helper()
	var last string
	deadline := time.Now().Add(testenv.Timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		cancel()
		if last = strings.TrimSpace(s); err == nil && ok(last) {
			return last
		}
		// Waits for the page's next animation frame, about 16 ms.
		ctx, cancel = context.WithTimeout(b.ctx, time.Second)
		_, _ = chromedp.Run(ctx, chromedp.Evaluate[bool]("new Promise(r => requestAnimationFrame(() => r(true)))", chromedp.EvalAwaitPromise))
		cancel()
	}
	b.t.Fatalf("browser: timed out waiting for %s (%s is %q)", what, sel, last)
	return ""
}

// inPage runs js, an expression that returns true once it has done its
// work on the page, until it does or ctx ends. One evaluation finds the
// element and acts on it, so a live page swapping its content between a
// lookup and an action (chromedp's Click, SendKeys) cannot fail it.
func inPage(what, js string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			ok, err := chromedp.Evaluate[bool](js)(ctx, t)
			if err == nil && ok {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
			case <-tick.C:
			}
		}
	})
}

// liveClick clicks the element the CSS selector sel finds, once it is
// there and enabled.
func liveClick(sel string) chromedp.Action[chromedp.Void] {
	return inPage("click "+sel, fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e || e.disabled) return false; e.click(); return true; })()`, sel))
}

// liveType appends text to the value of the form control sel finds, as
// typing does (input and change events follow).
func liveType(sel, text string) chromedp.Action[chromedp.Void] {
	return liveFill(sel, text, true)
}

// liveSet sets the value of the form control sel finds (input and change
// events follow).
func liveSet(sel, value string) chromedp.Action[chromedp.Void] {
	return liveFill(sel, value, false)
}

func liveFill(sel, v string, appendTo bool) chromedp.Action[chromedp.Void] {
	return inPage("fill "+sel, fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return false;
		e.focus(); e.value = (%t ? e.value : "") + %q;
		e.dispatchEvent(new Event("input", {bubbles: true})); e.dispatchEvent(new Event("change", {bubbles: true})); return true; })()`, sel, appendTo, v))
}

// screenshot saves the page as name.png in the test's directory and, with
// CONSOLE_SCREENSHOTS=1 (make screenshots), in docs/console/ for the README.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	png := value(b, "screenshot "+name, chromedp.FullScreenshot(100))
	dir := b.t.TempDir()
	if os.Getenv("CONSOLE_SCREENSHOTS") == "1" {
		dir = filepath.Join("..", "docs", "console")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// TestConsoleLoginAndOverview: the console asks for the API token, and
// the overview's counts match the API's.
func TestConsoleLoginAndOverview(t *testing.T) {
	c := startCloud(t, 5)
	testenv.Eventually(t, "5 simulated gateways online", func() bool {
		var l struct{ Online int }
		c.get(t, "/v1/gateways?tenant=sim", &l)
		return l.Online == 5
	})
	b := openBrowser(t, c)
	b.run("the login page", chromedp.Navigate(b.base+"/gateways"), chromedp.WaitVisible(chromedp.CSS(`#token`)))
	b.screenshot("login")
	b.run("a wrong token", chromedp.SendKeys(chromedp.CSS(`#token`), "wrong"), chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`p.error`)))
	b = openConsole(t, c)
	if got := b.eventually("the online count", "#count-online", func(s string) bool { return s == "5" }); got != "5" {
		t.Errorf("online = %s", got)
	}
}
