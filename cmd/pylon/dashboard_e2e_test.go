package main_test

// Browser tests of the dashboard: the whole platform in-process, driven by
// Debian's headless Chromium through the DevTools protocol (chromedp).
// Set PYLON_SCREENSHOTS=1 to also write docs/screenshots/*.png.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
)

// chromiumPath is where Debian's chromium package installs the browser.
const chromiumPath = "/usr/bin/chromium"

// Browser drives one headless Chromium tab against a platform.
type Browser struct {
	t   testing.TB
	ctx context.Context
	url string

	mu       sync.Mutex
	dialogs  []string // messages of JavaScript dialogs that opened
	problems []string // CSP violations and uncaught exceptions
}

// MustOpenBrowser starts Chromium with a fresh profile for the platform at
// baseURL. It fails (does not skip) when Chromium is missing.
func MustOpenBrowser(t testing.TB, baseURL string) *Browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the dashboard browser tests need Chromium at %s (%v): run scripts/test-deps.sh", chromiumPath, err)
	}
	// Without the chart library the binary serves pages without charts,
	// and the tests would time out waiting for them.
	if _, err := os.Stat(filepath.Join("..", "..", "dashboard", "static", "vendor", "uPlot.iife.min.js")); err != nil {
		t.Fatalf("the dashboard browser tests need the chart library (%v): run bash dashboard/build-assets.sh (scripts/test.sh does)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// For this test only: the server's certificate is issued by the
		// platform's own CA, which this throw-away profile does not trust.
		chromedp.Flag("ignore-certificate-errors", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &Browser{t: t, ctx: ctx, url: baseURL}

	// Start the browser, then watch for dialogs (accepting them, so that
	// the page goes on) and for console problems.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, ev.Message)
			b.mu.Unlock()
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.IsException() || strings.Contains(m.Text, "Content Security Policy") || strings.Contains(m.Text, "Refused to") {
				b.mu.Lock()
				b.problems = append(b.problems, m.String())
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// Dialogs returns the messages of the dialogs that opened so far.
func (b *Browser) Dialogs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.dialogs...)
}

// Problems returns the CSP violations and exceptions logged so far.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// Do runs actions with a time limit.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v (%s)", what, err, b.describe())
	}
}

// describe says where the browser is, for failure messages.
func (b *Browser) describe() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + " shows: " + document.body.innerText.slice(0, 300)`))
	if err != nil {
		return "page unknown: " + err.Error()
	}
	return s
}

// Open navigates to path and waits for sel.
func (b *Browser) Open(path, sel string) {
	b.t.Helper()
	b.Do("open "+path, chromedp.Navigate(b.url+path), chromedp.WaitVisible(chromedp.CSS(sel)))
}

// Click clicks sel and waits for wait on the page that follows.
func (b *Browser) Click(sel, wait string) {
	b.t.Helper()
	b.Do("click "+sel, chromedp.Click(chromedp.CSS(sel)), chromedp.WaitVisible(chromedp.CSS(wait)))
}

// GrantClipboard lets the pages of the platform use the clipboard.
func (b *Browser) GrantClipboard() {
	b.t.Helper()
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		_, err := chromedp.CallBrowser(b.ctx, browser.SetPermission, browser.SetPermissionParams{
			Permission: &browser.PermissionDescriptor{Name: name}, Setting: browser.PermissionSettingGranted, Origin: b.url,
		})
		if err != nil {
			b.t.Fatalf("grant %s: %v", name, err)
		}
	}
}

// Eval evaluates a JavaScript expression of type T, awaiting a promise.
func Eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// Text returns the text of the first element matching sel.
func (b *Browser) Text(sel string) string {
	b.t.Helper()
	return Eval[string](b, fmt.Sprintf(`(document.querySelector(%q) || {innerText: ""}).innerText.trim()`, sel))
}

// Present reports whether an element matches sel.
func (b *Browser) Present(sel string) bool {
	b.t.Helper()
	return Eval[bool](b, fmt.Sprintf(`document.querySelector(%q) !== null`, sel))
}

// PollText reloads path until the text of sel contains want.
func (b *Browser) PollText(path, sel, want string) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.Open(path, sel)
		got := b.Text(sel)
		if strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: %s shows %q, want %q", path, sel, got, want)
		}
		time.Sleep(100 * time.Millisecond) // between page loads, not a wait for a result
	}
}

// SignIn signs in with token from the sign-in page.
func (b *Browser) SignIn(token string) {
	b.t.Helper()
	b.Open("/", "#token") // redirected to the sign-in page
	b.Do("sign in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#stat-online")))
}

// Screenshot writes the full page to docs/screenshots/name.png when
// PYLON_SCREENSHOTS=1.
func (b *Browser) Screenshot(name string) {
	b.t.Helper()
	if os.Getenv("PYLON_SCREENSHOTS") != "1" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := filepath.Join("..", "..", "docs", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// createDevice registers a device with labels and metadata over the API.
func (p *Platform) createDevice(name string, labels map[string]string, metadata string) device {
	p.t.Helper()
	body := map[string]any{"name": name, "labels": labels}
	if metadata != "" {
		body["metadata"] = jsonRaw(metadata)
	}
	var d device
	if code := p.Do("POST", "/api/v1/devices", p.AdminToken, body, &d); code != http.StatusCreated {
		p.t.Fatalf("create device %q: got status %d, want 201", name, code)
	}
	return d
}

type jsonRaw string

func (j jsonRaw) MarshalJSON() ([]byte, error) { return []byte(j), nil }

var enrollTokenRE = regexp.MustCompile(`^pyl_et_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$`)

func TestDashboard_Browser(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	sensor := p.createDevice("sensor-1", map[string]string{"site": "lab", "model": "th-200"},
		`{"firmware":"2.4.1","location":{"building":"B","floor":2}}`)
	pump := p.createDevice("pump-02", map[string]string{"site": "plant", "model": "px-9"}, "")
	gateway := p.createDevice("gateway-north", map[string]string{"site": "plant", "role": "gateway"}, "")
	for i, name := range []string{"thermo-17", "thermo-18", "meter-a1", "meter-a2", "valve-7"} {
		p.createDevice(name, map[string]string{"site": []string{"lab", "plant", "field"}[i%3]}, "")
	}
	xssName := `<script>alert(1)</script>`
	xss := p.createDevice(xssName, map[string]string{"note": `"><img src=x onerror=alert(1)>`}, `{"x":"</pre><script>alert(2)</script>"}`)
	var viewer struct {
		Token string `json:"token"`
	}
	if code := p.Do("POST", "/api/v1/api-tokens", p.AdminToken, map[string]string{"name": "read-only", "role": "viewer"}, &viewer); code != http.StatusCreated {
		t.Fatalf("create viewer token: got %d, want 201", code)
	}

	b := MustOpenBrowser(t, p.URL)

	// Sign in: nobody is online yet.
	b.SignIn(p.AdminToken)
	if got := b.Text("#stat-online .value"); got != "0" {
		t.Fatalf("fleet page: got %q online, want 0", got)
	}
	if got := b.Text("#stat-total .value"); got != "9" {
		t.Fatalf("fleet page: got %q devices, want 9", got)
	}

	// An enrollment token for the sensor, made on its page, comes with a
	// command that sets up a simulated device.
	b.Open("/devices/"+sensor.ID, "#btn-enroll-token")
	if got := b.Text("#device-state"); got != "registered" {
		t.Fatalf("device page: got state %q, want registered", got)
	}
	b.Click("#btn-enroll-token", "#cmd-sim")
	secret := b.Text("#new-token")
	if !enrollTokenRE.MatchString(secret) {
		t.Fatalf("created page: got token %q, want pyl_et_...", secret)
	}
	simCmd := b.Text("#cmd-sim")
	if want := "pylon sim --server " + p.URL + " --ca ca.crt --enroll-token " + secret + " --devices 1 --duration 0"; simCmd != want {
		t.Fatalf("created page: got sim command %q, want %q", simCmd, want)
	}
	b.GrantClipboard()
	b.Do("copy the command", chromedp.Click(chromedp.CSS(`button[data-copy="cmd-sim"]`)))
	for deadline := time.Now().Add(5 * time.Second); ; { // the copy is asynchronous
		got := Eval[string](b, `navigator.clipboard.readText()`)
		if got == simCmd {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("copy button: clipboard holds %q, want the command", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Screenshot("token-created")

	// Watch the device come online: its page is open, live, before the
	// copied command starts the simulated device.
	b.Open("/devices/"+sensor.ID, "#telemetry")
	if got := b.Text("#conn-state"); got != "offline" {
		t.Fatalf("device page: got %q, want offline", got)
	}
	b.WaitJS("the live stream", `document.getElementById("live-status").textContent === "live"`, 10*time.Second)
	Eval[bool](b, `window.pylonNoReload = true`)
	runCopiedCommand(t, p, simCmd)
	b.WaitJS("the device online and active, live", `document.getElementById("conn-state").textContent.trim() === "online" && document.getElementById("device-state").textContent === "active"`, 20*time.Second)
	b.WaitJS("a live reading on the temperature chart", chartJS("temperature")+`.querySelector("canvas") !== null && Number(`+chartJS("temperature")+`.dataset.points) >= 1`, 15*time.Second)
	if got := Eval[string](b, latestJS("temperature")); !strings.HasSuffix(got, " °C") {
		t.Errorf("latest temperature: got %q, want a value in °C", got)
	}
	if !Eval[bool](b, `window.pylonNoReload === true`) {
		t.Fatal("the device page reloaded; the device was to come online live")
	}

	// The fleet page follows devices coming online.
	b.Open("/", "#stat-online")
	Eval[bool](b, `window.pylonNoReload = true`)
	for _, d := range []device{pump, gateway} {
		cert := p.Enroll(d.ID)
		if _, _, err := p.DialMQTT(&cert, d.ID); err != nil {
			t.Fatalf("connect %s: %v", d.Name, err)
		}
	}
	b.WaitJS("3 devices online on the fleet page", `document.querySelector("#stat-online .value").textContent === "3" && document.querySelector("#stat-offline .value").textContent === "6"`, 15*time.Second)
	if !Eval[bool](b, `window.pylonNoReload === true`) {
		t.Fatal("the fleet page reloaded; the counts were to change live")
	}
	b.Open("/devices", "#device-table")
	if got := Eval[int](b, `document.querySelectorAll("#device-table tbody tr").length`); got != 9 {
		t.Fatalf("device list: got %d rows, want 9", got)
	}
	b.Open("/devices?label=site%3Dplant&online=yes", "#device-table")
	if got := Eval[int](b, `document.querySelectorAll("#device-table tbody tr").length`); got != 2 {
		t.Fatalf("device list, site=plant online: got %d rows, want 2", got)
	}
	b.Open("/devices", "#device-table")
	b.Screenshot("devices")

	// Suspend with the button: the session is closed, and the open page
	// shows the device offline.
	b.Open("/devices/"+sensor.ID, "#btn-suspend")
	b.Click("#btn-suspend", ".notice")
	if got := b.Text("#device-state"); got != "suspended" {
		t.Fatalf("after suspend: got state %q, want suspended", got)
	}
	Eval[bool](b, `window.pylonNoReload = true`)
	b.WaitJS("the device offline", `document.getElementById("conn-state").textContent.trim() === "offline"`, 10*time.Second)
	if !b.Present("#btn-resume") || b.Present("#btn-suspend") {
		t.Fatal("after suspend: want a resume button and no suspend button")
	}
	if !Eval[bool](b, `window.pylonNoReload === true`) {
		t.Fatal("the device page reloaded; the device was to go offline live")
	}

	// A fleet enrollment token is shown once, then revoked.
	b.Open("/tokens", "#token-form")
	b.Do("fill the token form",
		chromedp.SendKeys(chromedp.CSS("#tok-labels"), "site=field, model=th-200"),
		chromedp.SendKeys(chromedp.CSS("#tok-uses"), "25"),
		chromedp.SendKeys(chromedp.CSS("#tok-ttl"), "7d"))
	b.Click("#tok-create", "#new-token")
	secret = b.Text("#new-token")
	if !enrollTokenRE.MatchString(secret) {
		t.Fatalf("created page: got token %q, want pyl_et_...", secret)
	}
	if got := b.Text("#cmd-script"); !strings.Contains(got, "examples/shell/enroll.sh "+p.URL+" ca.crt "+secret+" dev") {
		t.Fatalf("created page: got script command %q", got)
	}
	if got := b.Text("#cmd-sim"); !strings.HasSuffix(got, " --devices 10 --duration 0") {
		t.Fatalf("created page: got sim command %q, want 10 devices of the 25 uses", got)
	}
	b.Open("/tokens", "#token-table")
	if html := Eval[string](b, `document.documentElement.outerHTML`); strings.Contains(html, secret) {
		t.Fatal("the token list shows the secret again")
	}
	tokenID := secret[len("pyl_et_") : len("pyl_et_")+16]
	if got := b.Text("#token-" + tokenID + " .tok"); got != "live" {
		t.Fatalf("token list: got status %q, want live", got)
	}
	b.Click("#token-"+tokenID+" button.revoke", ".notice")
	if got := b.Text("#token-" + tokenID + " .tok"); got != "revoked" {
		t.Fatalf("after revoke: got status %q, want revoked", got)
	}
	b.Screenshot("tokens")

	// A device named like a script stays text, on every page that names it.
	for _, path := range []string{"/devices", "/devices/" + xss.ID, "/audit"} {
		b.Open(path, "main")
		if !Eval[bool](b, fmt.Sprintf(`document.body.innerText.includes(%q)`, xssName)) {
			t.Errorf("%s: the literal name %q is not visible", path, xssName)
		}
		if n := Eval[int](b, `document.querySelectorAll("main script, main img").length`); n != 0 {
			t.Errorf("%s: %d script or img elements in main, want 0", path, n)
		}
	}
	b.Open("/devices/"+xss.ID, "#device-name")
	if got := b.Text("#device-name"); got != xssName {
		t.Errorf("device page: got name %q, want %q", got, xssName)
	}

	b.Open("/audit", "#audit-verify")
	if got := b.Text("#audit-verify"); !strings.Contains(got, "OK") {
		t.Fatalf("audit page: got verification %q, want OK", got)
	}
	b.Screenshot("audit")

	// A viewer sees no buttons it cannot use.
	b.Click("#signout", "#token")
	b.SignIn(viewer.Token)
	b.Open("/devices/"+pump.ID, "#device-state")
	for _, sel := range []string{"#btn-suspend", "#btn-resume", "#btn-decommission", "#btn-enroll-token"} {
		if b.Present(sel) {
			t.Errorf("viewer sees %s", sel)
		}
	}
	b.Open("/tokens", "#token-table")
	if b.Present("#token-form") || b.Present("button.revoke") {
		t.Error("viewer sees the token form or revoke buttons")
	}

	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("JavaScript dialogs opened: %q", d)
	}
	if pr := b.Problems(); len(pr) > 0 {
		t.Errorf("console problems: %q", pr)
	}
}

// runCopiedCommand runs a command copied from a dashboard page with bash,
// in a directory holding the platform's ca.crt, with the pylon binary that
// TestMain built first on the PATH. The command runs until the test ends.
func runCopiedCommand(t *testing.T, p *Platform, command string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := os.ReadFile(filepath.Join(p.Config.Data, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", "exec "+command) // exec: killing the process ends the command
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(pylonBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", command, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", command, out)
		}
	})
}

// WaitJS evaluates the JavaScript condition cond until it is true, failing
// after timeout. what names the condition in the failure.
func (b *Browser) WaitJS(what, cond string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for !Eval[bool](b, cond) {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out after %v waiting for %s (%s)", timeout, what, b.describe())
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for a result
	}
}

// chartJS is a JavaScript expression for the telemetry chart of name (an
// empty stand-in while there is none).
func chartJS(name string) string {
	return fmt.Sprintf(`(Array.from(document.querySelectorAll(".tchart")).find(function (el) { return el.dataset.name === %q; }) || {dataset: {}, querySelector: function () { return null; }})`, name)
}

// latestJS is a JavaScript expression for the text of name's value in the
// latest-values table, or "".
func latestJS(name string) string {
	return fmt.Sprintf(`((Array.from(document.querySelectorAll("#latest-values tbody tr")).find(function (tr) { return tr.dataset.name === %q; }) || {cells: [0, {textContent: ""}]}).cells[1].textContent)`, name)
}

// writeHistory stores n readings of name (a wave around base) spread
// evenly over the span up to a minute ago, as the ingester would, in
// messages of pylon.MaxReadingsPerMessage from seq on.
func writeHistory(t testing.TB, p *Platform, deviceID, name, unit string, base float64, n int, span time.Duration, seq uint64) {
	t.Helper()
	now := time.Now().Add(-time.Minute)
	step := span / time.Duration(n)
	var msgs []*pylon.TelemetryMessage
	for i := 0; i < n; i += pylon.MaxReadingsPerMessage {
		m := &pylon.TelemetryMessage{DeviceID: deviceID, Seq: seq, Received: now}
		seq++
		for j := i; j < min(n, i+pylon.MaxReadingsPerMessage); j++ {
			v := base + 2*math.Sin(float64(j)/float64(n)*6*math.Pi) + 0.3*math.Sin(float64(j)*0.7)
			v = math.Round(v*100) / 100
			m.Readings = append(m.Readings, pylon.Reading{
				DeviceID: deviceID, Name: name, Unit: unit, Value: &v, Time: now.Add(-span + time.Duration(j+1)*step),
			})
		}
		msgs = append(msgs, m)
	}
	st, err := p.Telemetry.WriteMessages(context.Background(), msgs)
	if err != nil {
		t.Fatalf("write history: %v", err)
	}
	for i, s := range st {
		if s != pylon.WriteStored {
			t.Fatalf("history message %d: got status %v, want stored", i, s)
		}
	}
}

// publishSealed seals recs with the device's key as message seq and
// publishes it to the device's telemetry topic at QoS 1. It returns the
// PUBACK reason code.
func publishSealed(t *testing.T, c *paho.Client, deviceID string, key crypto.Signer, seq uint64, recs []senml.Record) byte {
	t.Helper()
	pack, err := senml.EncodeCBOR(recs)
	if err != nil {
		t.Fatalf("encode senml: %v", err)
	}
	msg, err := envelope.Seal(key, seq, pack, envelope.SealOptions{})
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Publish(ctx, &paho.Publish{Topic: "devices/" + deviceID + "/telemetry", QoS: 1, Payload: msg})
	if resp == nil {
		t.Fatalf("publish seq %d: no PUBACK: %v", seq, err)
	}
	return resp.ReasonCode
}

func TestDashboard_BrowserTelemetry(t *testing.T) {
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	sensor := p.createDevice("sensor-1", map[string]string{"site": "lab", "model": "th-200"},
		`{"firmware":"2.4.1","location":{"building":"B","floor":2}}`)
	logger := p.createDevice("logger-7", map[string]string{"site": "plant", "model": "dl-20"}, "")
	pump := p.createDevice("pump-02", map[string]string{"site": "plant", "model": "px-9"}, "")
	for i, name := range []string{"gateway-north", "thermo-17", "thermo-18", "meter-a1", "valve-7"} {
		p.createDevice(name, map[string]string{"site": []string{"lab", "plant", "field"}[i%3]}, "")
	}

	// History within the default range (1 h): 20,000 points for the
	// logger; a calmer sensor.
	writeHistory(t, p, logger.ID, "flow", "l/s", 12, 20_000, 50*time.Minute, 1)
	writeHistory(t, p, sensor.ID, "temp", "Cel", 21, 360, 50*time.Minute, 1)
	writeHistory(t, p, sensor.ID, "humidity", "%RH", 45, 360, 50*time.Minute, 10)

	b := MustOpenBrowser(t, p.URL)
	b.SignIn(p.AdminToken)

	// The sensor connects; its page follows what it publishes, live.
	cert := p.Enroll(sensor.ID)
	key := cert.PrivateKey.(crypto.Signer)
	client, _, err := p.DialMQTT(&cert, sensor.ID)
	if err != nil {
		t.Fatalf("connect sensor: %v", err)
	}
	pumpCert := p.Enroll(pump.ID)
	if _, _, err := p.DialMQTT(&pumpCert, pump.ID); err != nil {
		t.Fatalf("connect pump: %v", err)
	}
	b.Open("/devices/"+sensor.ID, "#telemetry")
	b.WaitJS("the history of temp", chartJS("temp")+`.dataset.points === "360"`, 10*time.Second)
	b.WaitJS("the live stream", `document.getElementById("live-status").textContent === "live"`, 10*time.Second)
	Eval[bool](b, `window.pylonNoReload = true`)

	// Readings of the last 21 seconds, as a device sends after a while.
	now := float64(time.Now().UnixMilli())/1000 - 21
	if rc := publishSealed(t, client, sensor.ID, key, 100, []senml.Record{
		{BaseTime: now, Name: "temp", Unit: "Cel", Value: ptrTo(23.75)},
		{Name: "humidity", Unit: "%RH", Value: ptrTo(47.0)},
		{Name: "pressure", Unit: "Pa", Value: ptrTo(101325.0)},
		{Name: "status", StringValue: ptrTo("<b>ok</b>")},
	}); rc != 0 {
		t.Fatalf("publish: got PUBACK 0x%02x, want 0x00", rc)
	}
	b.WaitJS("temp in the latest values", latestJS("temp")+` === "23.75 °C"`, 10*time.Second)
	for name, want := range map[string]string{"humidity": "47% RH", "pressure": "101,325 Pa", "status": "<b>ok</b>"} {
		if got := Eval[string](b, latestJS(name)); got != want {
			t.Errorf("latest value of %s: got %q, want %q", name, got, want)
		}
	}
	b.WaitJS("the live point on the temp chart", chartJS("temp")+`.dataset.points === "361"`, 10*time.Second)
	b.WaitJS("a new chart for pressure", chartJS("pressure")+`.querySelector("canvas") !== null`, 10*time.Second)
	if n := Eval[int](b, `document.querySelectorAll("#latest-values b, main script").length`); n != 0 {
		t.Errorf("a device's string value became markup: %d elements", n)
	}

	// A stream of readings moves the chart along.
	for i := range 20 {
		v := 23.75 + float64(i%5)/4
		if rc := publishSealed(t, client, sensor.ID, key, uint64(101+i), []senml.Record{{BaseTime: now + float64(i+1), Name: "temp", Unit: "Cel", Value: &v}}); rc != 0 {
			t.Fatalf("publish %d: got PUBACK 0x%02x, want 0x00", i, rc)
		}
	}
	b.WaitJS("20 more live points", chartJS("temp")+`.dataset.points === "381"`, 10*time.Second)

	// A message signed with another key is refused, and the page says so.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if rc := publishSealed(t, client, sensor.ID, other, 200, []senml.Record{{Name: "temp", Unit: "Cel", Value: ptrTo(99.0)}}); rc == 0 {
		t.Fatal("a message signed with another key was accepted")
	}
	b.WaitJS("the refused message", `document.querySelectorAll("#device-errors tbody tr").length === 1 && !document.getElementById("device-errors").hidden`, 10*time.Second)
	if got := b.Text("#device-errors tbody tr td.reason"); got == "" {
		t.Error("the refused message shows no reason")
	}
	// Signed with another key: unauthorized, and no sequence number (an
	// unverified one means nothing).
	if code, seq := b.Text("#device-errors tbody tr td.code"), b.Text("#device-errors tbody tr td.seq"); code != "unauthorized" || seq != "" {
		t.Errorf("the refused message shows code %q, seq %q; want unauthorized and none", code, seq)
	}
	if !Eval[bool](b, `window.pylonNoReload === true`) {
		t.Fatal("the page reloaded; the updates were to come live")
	}
	b.Screenshot("device")

	// The fleet page counts the messages and shows the newest errors.
	b.Open("/", "#stat-msg-rate")
	if got := b.Text("#stat-msg-rate .value"); got == "0" || got == "" {
		t.Errorf("fleet page: got %q messages per second, want more than 0", got)
	}
	if got := Eval[int](b, `document.querySelectorAll("#fleet-errors tbody tr").length`); got != 1 {
		t.Errorf("fleet page: got %d newest errors, want 1", got)
	} else if code := b.Text("#fleet-errors tbody tr td.code"); code != "unauthorized" {
		t.Errorf("fleet page: got code %q, want unauthorized", code)
	}
	b.PollText("/", "#stat-online .value", "2")
	b.Screenshot("fleet")

	// 20,000 points are drawn raw (how fast: BenchmarkDashboard_Chart).
	b.Open("/devices/"+logger.ID, "#telemetry")
	b.WaitJS("20,000 points on the flow chart", chartJS("flow")+`.dataset.points === "20000" && Number(`+chartJS("flow")+`.dataset.draws) >= 1`, 30*time.Second)
	b.Screenshot("device-history")
	if mode := Eval[string](b, chartJS("flow")+`.dataset.mode`); mode != "raw" {
		t.Errorf("got mode %q for 20,000 points, want raw", mode)
	}
	// The range picker reloads in place.
	b.Do("pick 15 min", chromedp.Click(chromedp.CSS(`#range-picker a[data-range="15m"]`)))
	b.WaitJS("the 15 minute history", `location.search === "?range=15m" && Number(`+chartJS("flow")+`.dataset.points) < 10000`, 10*time.Second)

	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("JavaScript dialogs opened: %q", d)
	}
	if pr := b.Problems(); len(pr) > 0 {
		t.Errorf("console problems: %q", pr)
	}
}

func ptrTo[T any](v T) *T { return &v }

// BenchmarkDashboard_Chart measures the device page's telemetry chart in
// headless Chromium (software rendering) with a history of n readings in
// the chart's range (1 h): up to dashboard.MaxRawPoints (20,000) are drawn
// raw, more as about 2,000 bucket averages.
//
// Each iteration loads the device page and waits until the chart has drawn
// its history; ns/op is that, from navigation. Also reported per load:
// fetch-ms (request, store query, JSON encoding and parsing), draw-ms (one
// canvas draw of the history, timed by uPlot's hooks) and json-KB. Then,
// once, the page takes 20 live readings a second while the mouse moves
// over the chart (the cursor and legend follow it) for 5 s, and the frame
// intervals are reported: frame-p50-ms, frame-p95-ms, frame-max-ms (16.7
// at 60 frames a second), with live-draw-ms, the mean redraw of the chart
// with a live point.
//
// Run it alone: flock /tmp/bench.lock go test -run '^$' -bench Dashboard_Chart -benchtime 10x ./cmd/pylon
func BenchmarkDashboard_Chart(b *testing.B) {
	for _, n := range []int{20_000, 100_000} {
		b.Run(fmt.Sprintf("history=%d", n), func(b *testing.B) { benchChart(b, n) })
	}
}

func benchChart(b *testing.B, n int) {
	p := MustRunMain(b, filepath.Join(b.TempDir(), "data"))
	logger := p.createDevice("logger-7", map[string]string{"site": "plant"}, "")
	writeHistory(b, p, logger.ID, "flow", "l/s", 12, n, 50*time.Minute, 1)
	br := MustOpenBrowser(b, p.URL)
	br.SignIn(p.AdminToken)
	chart := chartJS("flow")

	var fetchMs, drawMs, kb, wireKB float64
	loads := 0
	for b.Loop() {
		br.Open("/devices/"+logger.ID, "#telemetry")
		br.WaitJS("the history drawn", `Number(`+chart+`.dataset.draws) >= 1`, 60*time.Second)
		fetchMs += Eval[float64](br, `Number(`+chart+`.dataset.fetchMs)`)
		drawMs += Eval[float64](br, `Number(`+chart+`.dataset.drawMs)`)
		sizes := Eval[[]float64](br, `(function (e) { return [e.decodedBodySize / 1024, e.encodedBodySize / 1024]; })(performance.getEntriesByType("resource").filter(function (e) { return e.name.indexOf("readings.json") >= 0; })[0])`)
		kb += sizes[0]
		wireKB += sizes[1]
		loads++
	}
	points := Eval[string](br, chart+`.dataset.points`)
	b.ReportMetric(fetchMs/float64(loads), "fetch-ms")
	b.ReportMetric(drawMs/float64(loads), "draw-ms")
	b.ReportMetric(kb/float64(loads), "json-KB")
	b.ReportMetric(wireKB/float64(loads), "gzip-KB")

	// Live readings and a moving mouse: how smooth is the page?
	br.WaitJS("the live stream", `document.getElementById("live-status").textContent === "live"`, 10*time.Second)
	rect := Eval[[]float64](br, `(function () { var el = `+chart+`.querySelector(".u-over"); el.scrollIntoView({block: "center"}); var r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()`)
	Eval[bool](br, `(function () {
		window.benchFrames = []; window.benchDraws = [];
		var last = performance.now();
		function tick(t) { window.benchFrames.push(t - last); last = t; if (!window.benchStop) { requestAnimationFrame(tick); } }
		requestAnimationFrame(tick);
		var fig = `+chart+`;
		new MutationObserver(function () { window.benchDraws.push(Number(fig.dataset.drawMs)); }).observe(fig, {attributes: true, attributeFilter: ["data-draw-ms", "data-draws"]});
		return true;
	})()`)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				v := 12 + math.Sin(float64(now.UnixMilli())/5000)
				p.Events.PublishEvent(pylon.Event{Type: pylon.EventReadings, DeviceID: logger.ID, Time: now,
					Readings: []pylon.Reading{{DeviceID: logger.ID, Name: "flow", Unit: "l/s", Value: &v, Time: now}}})
			}
		}
	}()
	for i, end := 0, time.Now().Add(5*time.Second); time.Now().Before(end); i++ {
		x := rect[0] + rect[2]*(0.05+0.9*math.Abs(math.Sin(float64(i)/40)))
		y := rect[1] + rect[3]*(0.5+0.3*math.Sin(float64(i)/7))
		br.Do("move the mouse", chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, x, y))
		time.Sleep(16 * time.Millisecond) // about one move a frame
	}
	close(stop)
	<-done
	frames := Eval[[]float64](br, `(window.benchStop = true, window.benchFrames.slice(1))`)
	draws := Eval[[]float64](br, `window.benchDraws.filter(function (v) { return !isNaN(v); })`)
	if len(frames) == 0 || len(draws) == 0 {
		b.Fatalf("got %d frames and %d draws, want some", len(frames), len(draws))
	}
	slices.Sort(frames)
	q := func(f float64) float64 { return frames[min(len(frames)-1, int(f*float64(len(frames))))] }
	var sum float64
	for _, d := range draws {
		sum += d
	}
	b.ReportMetric(q(0.5), "frame-p50-ms")
	b.ReportMetric(q(0.95), "frame-p95-ms")
	b.ReportMetric(frames[len(frames)-1], "frame-max-ms")
	b.ReportMetric(sum/float64(len(draws)), "live-draw-ms")
	b.Logf("history %d readings: chart of %s points; %d frames and %d chart draws in 5 s of live readings and mouse moves",
		n, points, len(frames)+1, len(draws))
}
