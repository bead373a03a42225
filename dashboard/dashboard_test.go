package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/dashboard"
	"github.com/pylonhq/pylon/mock"
)

func TestSignIn(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	revoked, revokedID := e.MustToken(pylon.RoleAdmin)
	if err := e.APITokens.RevokeAPIToken(context.Background(), revokedID); err != nil {
		t.Fatal(err)
	}
	wrongSecret := admin[:len(admin)-4] + "AAAA"

	tests := []struct {
		name   string
		token  string
		status int
	}{
		{"admin token", admin, http.StatusSeeOther},
		{"admin token with white space", "  " + admin + "\n", http.StatusSeeOther},
		{"garbage", "hunter2", http.StatusUnauthorized},
		{"empty", "", http.StatusUnauthorized},
		{"wrong secret", wrongSecret, http.StatusUnauthorized},
		{"revoked token", revoked, http.StatusUnauthorized},
		{"enrollment token prefix", "pyl_et_" + admin[len("pyl_at_"):], http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := e.NewBrowser()
			resp, body := b.SignIn(tt.token, "/devices?state=active")
			if resp.StatusCode != tt.status {
				t.Fatalf("got status %d, want %d: %.300s", resp.StatusCode, tt.status, body)
			}
			resp, _ = b.Get("/")
			signedIn := resp.StatusCode == http.StatusOK
			if want := tt.status == http.StatusSeeOther; signedIn != want {
				t.Fatalf("GET / after sign-in: got status %d, want signed in %v", resp.StatusCode, want)
			}
			if !signedIn && !strings.HasPrefix(resp.Header.Get("Location"), "/login?next=") {
				t.Fatalf("GET / signed out: got Location %q, want /login?next=...", resp.Header.Get("Location"))
			}
			if !signedIn && !strings.Contains(body, "Invalid API token") {
				t.Fatalf("failed sign-in page: want the message \"Invalid API token\"")
			}
		})
	}

	t.Run("redirects to next", func(t *testing.T) {
		b := e.NewBrowser()
		resp, _ := b.SignIn(admin, "/devices?state=active")
		if got, want := resp.Header.Get("Location"), "/devices?state=active"; got != want {
			t.Fatalf("got Location %q, want %q", got, want)
		}
	})
	t.Run("no open redirect", func(t *testing.T) {
		for _, next := range []string{"https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"} {
			b := e.NewBrowser()
			resp, _ := b.SignIn(admin, next)
			if got := resp.Header.Get("Location"); got != "/" {
				t.Errorf("next %q: got Location %q, want /", next, got)
			}
		}
	})
	t.Run("failures are audited", func(t *testing.T) {
		recs, err := e.Audit.FindAuditRecords(context.Background(), pylon.AuditFilter{Action: pylon.ActionAuthFailed})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(recs), 5; got != want {
			t.Fatalf("got %d auth.failed records, want %d", got, want)
		}
		if r := recs[0]; r.Actor != "anonymous" || r.Object != "ip:127.0.0.1" {
			t.Fatalf("got record actor %q object %q, want anonymous ip:127.0.0.1", r.Actor, r.Object)
		}
	})
}

func TestSignIn_CookieAttributes(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	resp, _ := e.NewBrowser().SignIn(admin, "/")
	var c *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == dashboard.SessionCookie {
			c = ck
		}
	}
	if c == nil {
		t.Fatalf("no %s cookie set", dashboard.SessionCookie)
	}
	if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" {
		t.Fatalf("got cookie Secure=%v HttpOnly=%v SameSite=%v Path=%q, want Secure HttpOnly Strict /", c.Secure, c.HttpOnly, c.SameSite, c.Path)
	}
	if !strings.HasPrefix(c.Value, pylon.SessionPrefix) || len(c.Value) < len(pylon.SessionPrefix)+43 {
		t.Fatalf("got cookie value of %d bytes, want a %s secret", len(c.Value), pylon.SessionPrefix)
	}
	if strings.Contains(c.Value, admin[len(pylon.APITokenPrefix):]) {
		t.Fatal("the session cookie contains the API token")
	}
	if got := time.Duration(c.MaxAge) * time.Second; got != dashboard.SessionTTL {
		t.Fatalf("got Max-Age %v, want %v", got, dashboard.SessionTTL)
	}
}

func TestSignIn_FormNeedsItsCookie(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.NewBrowser()
	tests := []struct {
		name    string
		form    url.Values
		headers []string
	}{
		{"no login cookie", url.Values{"token": {admin}, "csrf": {"abc"}}, nil},
		{"foreign origin", url.Values{"token": {admin}}, []string{"Origin: https://evil.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "foreign origin" {
				tt.form.Set("csrf", b.MustCSRF("/login"))
			}
			resp, _ := b.Post("/login", tt.form, tt.headers...)
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("got status %d, want 403", resp.StatusCode)
			}
			if resp, _ := b.Get("/"); resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("signed in anyway: GET / got %d", resp.StatusCode)
			}
		})
	}
}

func TestSignIn_RateLimit(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.NewBrowser()
	for i := range 10 {
		if resp, _ := b.SignIn("pyl_at_wrong", "/"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: got status %d, want 401", i+1, resp.StatusCode)
		}
	}
	resp, body := b.SignIn(admin, "/")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("11th attempt with a good token: got status %d, want 429", resp.StatusCode)
	}
	if resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "Too many failed sign-ins") {
		t.Fatalf("429 page: got Retry-After %q, want a value and the message", resp.Header.Get("Retry-After"))
	}
	e.Advance(time.Minute)
	if resp, _ := b.SignIn(admin, "/"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after a minute: got status %d, want 303", resp.StatusCode)
	}
}

func TestSession_EndsWithTokenAndTime(t *testing.T) {
	t.Run("revoked token", func(t *testing.T) {
		e := MustNewEnv(t)
		admin, id := e.MustToken(pylon.RoleAdmin)
		b := e.MustSignIn(admin)
		if err := e.APITokens.RevokeAPIToken(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		if resp, _ := b.Get("/"); resp.StatusCode != http.StatusOK {
			t.Fatalf("within the recheck interval: got %d, want 200", resp.StatusCode)
		}
		e.Advance(dashboard.TokenRecheckInterval)
		if resp, _ := b.Get("/"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("after the recheck interval: got %d, want 303 to sign-in", resp.StatusCode)
		}
	})
	t.Run("expiry", func(t *testing.T) {
		e := MustNewEnv(t)
		admin, _ := e.MustToken(pylon.RoleAdmin)
		b := e.MustSignIn(admin)
		e.Advance(dashboard.SessionTTL - time.Second)
		if resp, _ := b.Get("/"); resp.StatusCode != http.StatusOK {
			t.Fatalf("before expiry: got %d, want 200", resp.StatusCode)
		}
		e.Advance(time.Second)
		if resp, _ := b.Get("/"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("at expiry: got %d, want 303", resp.StatusCode)
		}
	})
	t.Run("sign out", func(t *testing.T) {
		e := MustNewEnv(t)
		admin, _ := e.MustToken(pylon.RoleAdmin)
		b := e.MustSignIn(admin)
		csrf := b.MustCSRF("/")
		stolen, _ := b.Client.Jar.(interface {
			Cookies(*url.URL) []*http.Cookie
		})
		u, _ := url.Parse(e.TS.URL)
		cookies := stolen.Cookies(u)
		resp, _ := b.Post("/logout", url.Values{"csrf": {csrf}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
			t.Fatalf("sign out: got %d to %q, want 303 to /login", resp.StatusCode, resp.Header.Get("Location"))
		}
		// The old cookie no longer works, even if kept.
		replay := e.NewBrowser()
		replay.Client.Jar.SetCookies(u, cookies)
		if resp, _ := replay.Get("/"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("old cookie after sign-out: got %d, want 303", resp.StatusCode)
		}
	})
}

func TestSession_PrincipalIsTheToken(t *testing.T) {
	e := MustNewEnv(t)
	admin, id := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	resp, _ := b.Post("/tokens", url.Values{"csrf": {b.MustCSRF("/")}, "device_id": {d.ID}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create token: got %d, want 201", resp.StatusCode)
	}
	recs, err := e.Audit.FindAuditRecords(context.Background(), pylon.AuditFilter{Action: pylon.ActionEnrollTokenCreate})
	if err != nil || len(recs) != 1 {
		t.Fatalf("got %d records (err %v), want 1", len(recs), err)
	}
	if got, want := recs[0].Actor, "token:"+id; got != want {
		t.Fatalf("got actor %q, want %q", got, want)
	}
}

func TestCSRF(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	if _, err := e.Devices.TransitionDevice(context.Background(), d.ID, pylon.DeviceActive); err != nil {
		t.Fatal(err)
	}
	csrf := b.MustCSRF("/devices/" + d.ID)
	other := e.MustSignIn(admin)
	otherCSRF := other.MustCSRF("/")
	wrong := "x" + csrf[1:]
	if wrong == csrf {
		wrong = "y" + csrf[1:]
	}

	tests := []struct {
		name    string
		form    url.Values
		headers []string
		status  int
	}{
		{"missing", url.Values{}, nil, http.StatusForbidden},
		{"wrong", url.Values{"csrf": {wrong}}, nil, http.StatusForbidden},
		{"another session's", url.Values{"csrf": {otherCSRF}}, nil, http.StatusForbidden},
		{"foreign origin", url.Values{"csrf": {csrf}}, []string{"Origin: https://evil.example"}, http.StatusForbidden},
		{"null origin, no fetch metadata", url.Values{"csrf": {csrf}}, []string{"Origin: null"}, http.StatusForbidden},
		{"null origin, cross-site", url.Values{"csrf": {csrf}}, []string{"Origin: null", "Sec-Fetch-Site: cross-site"}, http.StatusForbidden},
		{"same-site", url.Values{"csrf": {csrf}}, []string{"Sec-Fetch-Site: same-site"}, http.StatusForbidden},
		{"cross-site fetch", url.Values{"csrf": {csrf}}, []string{"Sec-Fetch-Site: cross-site"}, http.StatusForbidden},
		{"foreign origin, same-origin fetch", url.Values{"csrf": {csrf}}, []string{"Origin: https://evil.example", "Sec-Fetch-Site: same-origin"}, http.StatusForbidden},
		{"header token, same origin", url.Values{}, []string{"X-CSRF-Token: " + csrf, "Origin: " + e.TS.URL}, http.StatusSeeOther},
		{"form token, null origin, same-origin fetch (a browser under no-referrer)", url.Values{"csrf": {csrf}}, []string{"Origin: null", "Sec-Fetch-Site: same-origin"}, http.StatusSeeOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := b.Post("/devices/"+d.ID+"/suspend", tt.form, tt.headers...)
			if resp.StatusCode != tt.status {
				t.Fatalf("got status %d, want %d: %.200s", resp.StatusCode, tt.status, body)
			}
			got, _ := e.Devices.FindDeviceByID(context.Background(), d.ID)
			if want := tt.status == http.StatusSeeOther; (got.State == pylon.DeviceSuspended) != want {
				t.Fatalf("got state %s, want suspended %v", got.State, want)
			}
			if got.State == pylon.DeviceSuspended {
				e.Devices.TransitionDevice(context.Background(), d.ID, pylon.DeviceActive)
			}
		})
	}
	if got, want := strings.Join(e.Disconnects(), ","), d.ID+":suspended,"+d.ID+":suspended"; got != want {
		t.Fatalf("got disconnects %q, want %q", got, want)
	}
}

func TestRoles_ViewerCannotOperate(t *testing.T) {
	e := MustNewEnv(t)
	viewer, _ := e.MustToken(pylon.RoleViewer)
	operator, _ := e.MustToken(pylon.RoleOperator)
	d := e.MustDevice("sensor-1", nil)
	if _, err := e.Devices.TransitionDevice(context.Background(), d.ID, pylon.DeviceActive); err != nil {
		t.Fatal(err)
	}
	buttons := []string{`id="btn-suspend"`, `id="btn-decommission"`, `id="btn-enroll-token"`, `id="token-form"`}

	v := e.MustSignIn(viewer)
	_, page := v.Get("/devices/" + d.ID)
	_, tokens := v.Get("/tokens")
	for _, btn := range buttons {
		if strings.Contains(page+tokens, btn) {
			t.Errorf("viewer sees %s", btn)
		}
	}
	csrf := CSRF(t, page)
	for _, path := range []string{"/devices/" + d.ID + "/suspend", "/devices/" + d.ID + "/decommission", "/tokens"} {
		resp, _ := v.Post(path, url.Values{"csrf": {csrf}, "device_id": {d.ID}})
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("viewer POST %s: got %d, want 403", path, resp.StatusCode)
		}
	}
	if resp, _ := v.Get("/devices/" + d.ID + "/decommission"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("viewer GET decommission page: got %d, want 403", resp.StatusCode)
	}
	if got, _ := e.Devices.FindDeviceByID(context.Background(), d.ID); got.State != pylon.DeviceActive {
		t.Fatalf("viewer changed the state to %s", got.State)
	}

	o := e.MustSignIn(operator)
	_, page = o.Get("/devices/" + d.ID)
	_, tokens = o.Get("/tokens")
	for _, btn := range buttons {
		if !strings.Contains(page+tokens, btn) {
			t.Errorf("operator does not see %s", btn)
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	for _, path := range []string{"/", "/login", "/devices", "/devices/" + d.ID, "/tokens", "/audit", "/nope", "/static/app.css", "/static/nope.js"} {
		t.Run(path, func(t *testing.T) {
			resp, _ := b.Get(path)
			h := resp.Header
			for k, want := range map[string]string{
				"Content-Security-Policy": dashboard.ContentSecurityPolicy,
				"X-Frame-Options":         "DENY",
				"Referrer-Policy":         "no-referrer",
				"X-Content-Type-Options":  "nosniff",
			} {
				if got := h.Get(k); got != want {
					t.Errorf("%s: got %q, want %q", k, got, want)
				}
			}
		})
	}
	if !strings.Contains(dashboard.ContentSecurityPolicy, "script-src 'self';") || strings.Contains(dashboard.ContentSecurityPolicy, "unsafe") {
		t.Fatalf("CSP allows more than our own scripts: %s", dashboard.ContentSecurityPolicy)
	}
}

// inlineRE finds inline script, inline style and event handler attributes.
var inlineRE = regexp.MustCompile(`(?i)<script>|<script [^>]*>[^<]|<style|\sstyle=|\son[a-z]+=`)

// secretRE matches the start of an API token or a session cookie value.
var secretRE = regexp.MustCompile(regexp.QuoteMeta(pylon.APITokenPrefix) + `[a-z2-7]|` + regexp.QuoteMeta(pylon.SessionPrefix) + `[a-z2-7]`)

func TestPages_NoInlineScriptOrStyle(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", map[string]string{"site": "lab"})
	e.Devices.RecordConnection(context.Background(), pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: time.Now(), RemoteAddr: "127.0.0.1:5000"})
	pages := map[string]string{}
	for _, path := range []string{"/", "/devices", "/devices/" + d.ID, "/tokens", "/audit", "/logout", "/nope", "/devices/" + d.ID + "/decommission"} {
		_, pages[path] = b.Get(path)
	}
	_, pages["created"] = b.Post("/tokens", url.Values{"csrf": {b.MustCSRF("/")}, "labels": {"site=lab"}, "uses": {"5"}})
	_, pages["login"] = e.NewBrowser().Get("/login")
	var session string
	for _, c := range b.Client.Jar.Cookies(mustURL(e.TS.URL)) {
		if c.Name == dashboard.SessionCookie {
			session = c.Value
		}
	}
	if session == "" {
		t.Fatal("no session cookie")
	}
	for path, body := range pages {
		if m := inlineRE.FindString(body); m != "" {
			t.Errorf("%s: inline script or style: %q", path, m)
		}
		// No secret of the sign-in reaches a page: the API token and the
		// session live in the HttpOnly cookie and the server only.
		for what, secret := range map[string]string{"the API token": admin, "the session": session} {
			if strings.Contains(body, secret) {
				t.Errorf("%s: the page holds %s", path, what)
			}
		}
		if m := secretRE.FindString(body); m != "" {
			t.Errorf("%s: the page holds an API token or session id: %q", path, m)
		}
		if !strings.Contains(body, "<html") {
			t.Errorf("%s: not a page", path)
		}
	}
}

func TestXSS_Escaped(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	name := `<script>alert(1)</script>`
	label := `"><img src=x onerror=alert(1)>`
	meta := json.RawMessage(`{"note":"</pre><script>alert(2)</script>"}`)
	d := &pylon.Device{Name: name, Labels: map[string]string{"site": label}, Metadata: meta}
	if err := e.Devices.CreateDevice(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/", "/devices", "/devices/" + d.ID, "/audit", "/devices?q=" + url.QueryEscape(name), "/devices?label=" + url.QueryEscape("site="+label)} {
		t.Run(path, func(t *testing.T) {
			resp, body := b.Get(path)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got status %d, want 200", resp.StatusCode)
			}
			for _, bad := range []string{"<script>alert", "<img src=x", "onerror=alert(1)>", `"><img`} {
				if strings.Contains(body, bad) {
					t.Errorf("page contains unescaped %q", bad)
				}
			}
		})
	}
	_, body := b.Get("/devices/" + d.ID)
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;", "&lt;/pre&gt;&lt;script&gt;alert(2)"} {
		if !strings.Contains(body, want) {
			t.Errorf("device page: want escaped %q", want)
		}
	}
}

var nextRE = regexp.MustCompile(`id="page-next" href="([^"]+)"|href="([^"]+)" id="page-next"`)
var rowRE = regexp.MustCompile(`<a href="/devices/([a-z2-7]{16})">`)

func TestDevices_Paging(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	for i := range 250 {
		labels := map[string]string{"rack": fmt.Sprint(i % 2)}
		e.MustDevice(fmt.Sprintf("dev-%03d", i), labels)
	}
	tests := []struct {
		name  string
		start string
		pages []int
	}{
		{"all", "/devices", []int{50, 50, 50, 50, 50}},
		{"label filter", "/devices?label=rack%3D1", []int{50, 50, 25}},
		{"search", "/devices?q=DEV-1", []int{50, 50}},
		{"state", "/devices?state=registered&online=no", []int{50, 50, 50, 50, 50}},
		{"no match", "/devices?state=active", []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[string]bool{}
			path := tt.start
			var got []int
			for page := 0; path != ""; page++ {
				if page > 10 {
					t.Fatal("too many pages")
				}
				resp, body := b.Get(path)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: got %d, want 200", path, resp.StatusCode)
				}
				rows := rowRE.FindAllStringSubmatch(body, -1)
				got = append(got, len(rows))
				for _, r := range rows {
					if seen[r[1]] {
						t.Fatalf("device %s on two pages", r[1])
					}
					seen[r[1]] = true
				}
				if page > 0 && !strings.Contains(body, `id="page-first"`) {
					t.Errorf("page %d has no First link", page+1)
				}
				path = ""
				if m := nextRE.FindStringSubmatch(body); m != nil {
					path = strings.ReplaceAll(m[1]+m[2], "&amp;", "&")
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.pages) {
				t.Fatalf("got page sizes %v, want %v", got, tt.pages)
			}
		})
	}
}

func TestDevices_BadFilters(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	tests := []struct {
		name, query, msg string
	}{
		{"state", "state=sleepy", "unknown state"},
		{"online", "online=maybe", "yes or no"},
		{"label form", "label=site", "key=value"},
		{"label key", "label=" + url.QueryEscape("bad key!=x"), "invalid key"},
		{"cursor", "cursor=garbage", "cursor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := b.Get("/devices?" + tt.query)
			if resp.StatusCode != http.StatusUnprocessableEntity {
				t.Fatalf("got %d, want 422", resp.StatusCode)
			}
			if !strings.Contains(body, tt.msg) {
				t.Fatalf("page does not say %q", tt.msg)
			}
		})
	}
}

func TestDevice_Page(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	ctx := context.Background()
	d := &pylon.Device{Name: "sensor-1", Labels: map[string]string{"site": "lab"}, Metadata: json.RawMessage(`{"fw":"1.2.3"}`)}
	if err := e.Devices.CreateDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	// Enroll it with a fake issuer, so that it has a certificate.
	_, tokID, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	if err := e.EnrollTokens.CreateEnrollmentToken(ctx, &pylon.EnrollmentToken{ID: tokID, DeviceID: d.ID, Uses: 1, ExpiresAt: time.Now().Add(time.Hour), CreatedAt: time.Now()}, hash); err != nil {
		t.Fatal(err)
	}
	notAfter := e.Now().Add(30*24*time.Hour + time.Hour)
	_, _, err := e.Enroll.Enroll(ctx, tokID, hash, "x", func(*pylon.Device) (*pylon.Certificate, error) {
		return &pylon.Certificate{Serial: "0a1b2c", NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter, KeyType: "ECDSA-P256", DER: []byte{1}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: time.Now(), RemoteAddr: "192.0.2.7:4000"}); err != nil {
		t.Fatal(err)
	}
	// What the device did itself is part of its trail; another device's
	// doings are not.
	other := e.MustDevice("sensor-2", nil)
	for _, who := range []string{d.ID, other.ID} {
		dctx := pylon.NewContextWithPrincipal(ctx, pylon.Principal{Kind: pylon.PrincipalDevice, ID: who})
		if err := e.Audit.AppendAudit(dctx, &pylon.AuditRecord{Action: pylon.ActionMQTTRefused, Object: "acl:" + who}); err != nil {
			t.Fatal(err)
		}
	}
	resp, body := b.Get("/devices/" + d.ID)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
	for _, want := range []string{
		`id="device-name">sensor-1<`, `>active<`, `id="conn-state"`, "online", "192.0.2.7:4000",
		"site=lab", "&#34;fw&#34;: &#34;1.2.3&#34;", "0a1b2c", "ECDSA-P256", "in 30 days",
		"device.create", "device.activate", `id="btn-suspend"`,
		">certificate.issue<", ">certificate:0a1b2c<", ">acl:" + d.ID + "<",
		`<dd id="device-cert"><span class="mono" title="0a1b2c">0a1b2c</span>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("device page: missing %q", want)
		}
	}
	if strings.Contains(body, "acl:"+other.ID) {
		t.Error("device page: the trail shows what another device did")
	}
	if strings.Contains(body, `class="soon"`) {
		t.Error("device page: a certificate valid for 30 days is shown as expiring soon")
	}

	// The chart needs uPlot, which build-assets.sh puts in static/vendor.
	_, err = os.Stat("static/vendor/uPlot.iife.min.js")
	if want, got := err == nil, strings.Contains(body, `<script src="/static/vendor/uPlot.iife.min.js?v=`) && strings.Contains(body, `id="conn-chart"`); got != want {
		t.Errorf("device page: got chart %v, want %v (uPlot built: %v)", got, want, err == nil)
	}
	if resp, _ := b.Get("/devices/aaaaaaaaaaaaaaaa"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown device: got %d, want 404", resp.StatusCode)
	}
	if resp, _ := b.Get("/devices/NOT-AN-ID"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("bad id: got %d, want 404", resp.StatusCode)
	}

	e.Advance(25 * 24 * time.Hour)
	if _, body = e.MustSignIn(admin).Get("/devices/" + d.ID); !strings.Contains(body, `class="soon">in 5 days<`) {
		t.Error("device page: a certificate valid for 5 more days is not shown as expiring soon")
	}
}

func TestDevice_Lifecycle(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleOperator)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	if _, err := e.Devices.TransitionDevice(context.Background(), d.ID, pylon.DeviceActive); err != nil {
		t.Fatal(err)
	}
	csrf := b.MustCSRF("/")
	steps := []struct {
		action string
		status int
		state  pylon.DeviceState
		button string // on the page afterwards
	}{
		{"resume", http.StatusConflict, pylon.DeviceActive, `id="btn-suspend"`},
		{"suspend", http.StatusSeeOther, pylon.DeviceSuspended, `id="btn-resume"`},
		{"resume", http.StatusSeeOther, pylon.DeviceActive, `id="btn-suspend"`},
		{"decommission", http.StatusSeeOther, pylon.DeviceDecommissioned, `id="device-state" data-rendered="decommissioned">decommissioned<`},
		{"resume", http.StatusConflict, pylon.DeviceDecommissioned, `id="device-state" data-rendered="decommissioned">decommissioned<`},
	}
	for _, st := range steps {
		resp, _ := b.Post("/devices/"+d.ID+"/"+st.action, url.Values{"csrf": {csrf}})
		if resp.StatusCode != st.status {
			t.Fatalf("%s: got %d, want %d", st.action, resp.StatusCode, st.status)
		}
		_, body := b.Get("/devices/" + d.ID)
		if !strings.Contains(body, st.button) {
			t.Fatalf("after %s: page lacks %s", st.action, st.button)
		}
		if got, _ := e.Devices.FindDeviceByID(context.Background(), d.ID); got.State != st.state {
			t.Fatalf("after %s: got state %s, want %s", st.action, got.State, st.state)
		}
	}
	if got, want := strings.Join(e.Disconnects(), ","), d.ID+":suspended,"+d.ID+":decommissioned"; got != want {
		t.Fatalf("got disconnects %q, want %q", got, want)
	}
	if resp, _ := b.Get("/devices/" + d.ID + "/decommission"); resp.StatusCode != http.StatusConflict {
		t.Fatalf("confirm page of a decommissioned device: got %d, want 409", resp.StatusCode)
	}
}

func TestDecommission_AsksFirst(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	resp, body := b.Get("/devices/" + d.ID + "/decommission")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `action="/devices/`+d.ID+`/decommission"`) {
		t.Fatalf("confirm page: got %d, want 200 with the form", resp.StatusCode)
	}
	if got, _ := e.Devices.FindDeviceByID(context.Background(), d.ID); got.State != pylon.DeviceRegistered {
		t.Fatalf("GET changed the state to %s", got.State)
	}
}

var tokenRE = regexp.MustCompile(`pyl_et_[a-z2-7]{16}_[A-Za-z0-9_-]{43}`)

func TestTokens_CreateShowOnceRevoke(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	csrf := b.MustCSRF("/tokens")

	resp, body := b.Post("/tokens", url.Values{"csrf": {csrf}, "device_id": {d.ID}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: got %d, want 201: %.300s", resp.StatusCode, body)
	}
	secret := tokenRE.FindString(body)
	if secret == "" {
		t.Fatal("created page does not show the token")
	}
	host := strings.TrimPrefix(e.TS.URL, "https://")
	for _, want := range []string{
		"examples/shell/enroll.sh https://" + host + " ca.crt " + secret + " dev<",
		">pylon sim --server https://" + host + " --ca ca.crt --enroll-token " + secret + " --devices 1 --duration 0<",
		`-subj &#34;/CN=` + d.ID + `&#34;`,
		"https://" + host + "/.well-known/est/simpleenroll",
		`data-copy="new-token"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("created page: missing %q", want)
		}
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("created page: got Cache-Control %q, want no-store", resp.Header.Get("Cache-Control"))
	}
	id, hash, err := pylon.ParseSecret(pylon.EnrollmentTokenPrefix, secret)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.EnrollTokens.FindEnrollmentTokenByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if tok.DeviceID != d.ID || tok.Uses != 1 || !tok.ExpiresAt.Equal(e.Now().Add(pylon.DefaultEnrollmentTTL)) {
		t.Fatalf("got token %+v, want one use for %s, default TTL", tok, d.ID)
	}
	_ = hash

	_, list := b.Get("/tokens")
	if strings.Contains(list, secret) || tokenRE.MatchString(list) {
		t.Fatal("the token list shows a secret")
	}
	if !strings.Contains(list, `id="token-`+id+`"`) || !strings.Contains(list, ">live<") {
		t.Fatal("the token list lacks the live token")
	}
	resp, _ = b.Post("/tokens/"+id+"/revoke", url.Values{"csrf": {csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke: got %d, want 303", resp.StatusCode)
	}
	_, list = b.Get("/tokens")
	if !strings.Contains(list, ">revoked<") || strings.Contains(list, ">live<") {
		t.Fatal("the token list does not show the token revoked")
	}
	_, live := b.Get("/tokens?live=1")
	if strings.Contains(live, `id="token-`+id+`"`) {
		t.Fatal("the live list shows a revoked token")
	}
}

func TestTokens_CreateForm(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	csrf := b.MustCSRF("/tokens")
	tests := []struct {
		name   string
		form   url.Values
		status int
		uses   int
		ttl    time.Duration
		labels string
		msg    string
	}{
		{"fleet", url.Values{"labels": {"site=lab, model=x1"}, "uses": {"100"}, "ttl": {"7d"}}, 201, 100, 7 * 24 * time.Hour, "map[model:x1 site:lab]", ""},
		{"fleet defaults", url.Values{}, 201, 1, pylon.DefaultEnrollmentTTL, "map[]", ""},
		{"go duration", url.Values{"ttl": {"90m"}}, 201, 1, 90 * time.Minute, "map[]", ""},
		{"device with labels", url.Values{"device_id": {d.ID}, "labels": {"a=b"}}, 422, 0, 0, "", "not allowed with a device id"},
		{"device with uses", url.Values{"device_id": {d.ID}, "uses": {"2"}}, 422, 0, 0, "", "exactly one use"},
		{"bad device id", url.Values{"device_id": {"nope"}}, 422, 0, 0, "", "not a device id"},
		{"unknown device", url.Values{"device_id": {"aaaaaaaaaaaaaaaa"}}, 404, 0, 0, "", "not found"},
		{"bad labels", url.Values{"labels": {"site"}}, 422, 0, 0, "", "key=value"},
		{"bad uses", url.Values{"uses": {"0"}}, 422, 0, 0, "", "uses: must be"},
		{"bad ttl", url.Values{"ttl": {"forever"}}, 422, 0, 0, "", "ttl:"},
		{"ttl too long", url.Values{"ttl": {"400d"}}, 422, 0, 0, "", "ttl:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.form.Set("csrf", csrf)
			resp, body := b.Post("/tokens", tt.form)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d, want %d: %.300s", resp.StatusCode, tt.status, body)
			}
			if tt.status != 201 {
				if !strings.Contains(body, tt.msg) {
					t.Fatalf("page does not say %q", tt.msg)
				}
				return
			}
			id, _, err := pylon.ParseSecret(pylon.EnrollmentTokenPrefix, tokenRE.FindString(body))
			if err != nil {
				t.Fatal(err)
			}
			tok, err := e.EnrollTokens.FindEnrollmentTokenByID(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if ttl := tok.ExpiresAt.Sub(e.Now()); tok.Uses != tt.uses || ttl != tt.ttl || fmt.Sprint(tok.Labels) != tt.labels {
				t.Fatalf("got uses %d ttl %v labels %v, want %d %v %s", tok.Uses, ttl, tok.Labels, tt.uses, tt.ttl, tt.labels)
			}
			if !strings.Contains(body, " dev serial-0042<") {
				t.Fatal("fleet token: the script command lacks a common name")
			}
			if want := fmt.Sprintf(" --devices %d --duration 0<", min(tt.uses, 10)); !strings.Contains(body, want) {
				t.Fatalf("fleet token: the sim command lacks %q", want)
			}
		})
	}
}

func TestEnrollCommands_MatchProtocolDoc(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	script, commands := dashboard.EnrollCommands("https://pylon.example:8443", "$TOKEN", "serial-0042", true)
	for _, line := range strings.Split(commands, "\n") {
		if !strings.Contains(string(doc), line+"\n") {
			t.Errorf("docs/protocol.md lacks the line %q", line)
		}
	}
	if want := "examples/shell/enroll.sh https://pylon.example:8443 ca.crt $TOKEN dev serial-0042"; script != want {
		t.Errorf("got script %q, want %q", script, want)
	}
	if !strings.Contains(string(doc), "examples/shell/enroll.sh SERVER CA_FILE TOKEN DIR [CN]") {
		t.Error("docs/protocol.md no longer documents enroll.sh SERVER CA_FILE TOKEN DIR [CN]")
	}
}

var seqRE = regexp.MustCompile(`<td class="num mono">(\d+)</td>`)
var olderRE = regexp.MustCompile(`href="([^"]+)" id="page-older"`)

func TestAudit_PagingAndFilters(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	ctx := context.Background()
	// 60 devices, then 60 updates of one of them, each followed by the
	// creation of another device: the device's records are sparse.
	var target *pylon.Device
	for i := range 60 {
		d := e.MustDevice(fmt.Sprintf("dev-%03d", i), nil)
		if i == 7 {
			target = d
		}
	}
	for i := range 60 {
		if _, err := e.Devices.UpdateDevice(ctx, target.ID, pylon.DeviceUpdate{Labels: &map[string]string{"n": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
		e.MustDevice(fmt.Sprintf("x-%03d", i), nil)
	}
	v, err := e.Audit.VerifyAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := int(v.Records)
	tests := []struct {
		name  string
		start string
		want  int // records in all pages
	}{
		{"everything", "/audit", total},
		{"one device", "/audit?object=device%3A" + target.ID, 61},
		{"one action", "/audit?action=device.update", 60},
		{"prefix", "/audit?object=device%3A", total - 1}, // but the API token's record
		{"no match", "/audit?actor=nobody", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.start
			var seqs []int
			for page := 0; path != ""; page++ {
				if page > 40 {
					t.Fatal("too many pages")
				}
				resp, body := b.Get(path)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: got %d", path, resp.StatusCode)
				}
				rows := seqRE.FindAllStringSubmatch(body, -1)
				if len(rows) > 50 {
					t.Fatalf("page of %d records, want at most 50", len(rows))
				}
				for _, r := range rows {
					var n int
					fmt.Sscan(r[1], &n)
					if len(seqs) > 0 && n >= seqs[len(seqs)-1] {
						t.Fatalf("record %d after %d: not newest first", n, seqs[len(seqs)-1])
					}
					seqs = append(seqs, n)
				}
				path = ""
				if m := olderRE.FindStringSubmatch(body); m != nil {
					path = strings.ReplaceAll(m[1], "&amp;", "&")
				}
			}
			if len(seqs) != tt.want {
				t.Fatalf("got %d records over all pages, want %d", len(seqs), tt.want)
			}
		})
	}
	_, body := b.Get("/audit")
	if !regexp.MustCompile(`Hash chain verified: <strong>OK</strong>, \d+ records`).MatchString(body) {
		t.Fatal("audit page does not show the verification")
	}
	if resp, _ := b.Get("/audit?before=abc"); resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("bad before: got %d, want 422", resp.StatusCode)
	}
}

func TestAudit_ShowsBrokenChain(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	e.Server.Audit = &mock.AuditService{
		FindAuditRecordsFn: func(ctx context.Context, f pylon.AuditFilter) ([]*pylon.AuditRecord, error) { return nil, nil },
		VerifyAuditFn: func(ctx context.Context) (pylon.AuditVerification, error) {
			return pylon.AuditVerification{OK: false, Records: 41, BadSeq: 42, Problem: "hash does not match the record's contents"}, nil
		},
	}
	b := e.MustSignIn(admin)
	_, body := b.Get("/audit")
	if !strings.Contains(body, `class="verify broken"`) || !strings.Contains(body, "BROKEN</strong> at record 42") {
		t.Fatalf("audit page does not show the broken chain: %.500s", body)
	}
}

func TestOverview(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	ctx := context.Background()
	for i := range 8 {
		d := e.MustDevice(fmt.Sprintf("dev-%d", i), nil)
		if i < 3 {
			e.Devices.TransitionDevice(ctx, d.ID, pylon.DeviceActive)
		}
		if i < 2 {
			e.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: time.Now()})
		}
	}
	_, body := b.Get("/")
	for _, want := range []string{
		`id="stat-total">` + "\n" + `    <span class="label">Devices</span><span class="value">8</span>`,
		`Online</span><span class="value">2</span>`,
		`Offline</span><span class="value">6</span>`,
		`state-registered">registered</span></a></td>` + "\n" + `        <td class="num">5</td>`,
		`state-active">active</span></a></td>` + "\n" + `        <td class="num">3</td>`,
		"device.activate",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("overview: missing %q", want)
		}
	}
	if n := len(seqRE.FindAllString(body, -1)); n != 10 {
		t.Errorf("overview: got %d audit records, want 10", n)
	}
}

func TestStatic(t *testing.T) {
	e := MustNewEnv(t)
	b := e.NewBrowser()
	_, login := b.Get("/login")
	m := regexp.MustCompile(`href="(/static/app.css\?v=[0-9a-f]+)"`).FindStringSubmatch(login)
	if m == nil {
		t.Fatal("page does not link a versioned app.css")
	}
	tests := []struct {
		path, ctype, cache string
		status             int
	}{
		{m[1], "text/css; charset=utf-8", "public, max-age=31536000, immutable", 200},
		{"/static/app.css", "text/css; charset=utf-8", "no-cache", 200},
		{"/static/app.js", "text/javascript; charset=utf-8", "no-cache", 200},
		{"/static/nope.js", "text/plain; charset=utf-8", "", 404},
		{"/static/../dashboard.go", "", "", 404},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, _ := b.Get(tt.path)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.ctype != "" && resp.Header.Get("Content-Type") != tt.ctype {
				t.Errorf("got Content-Type %q, want %q", resp.Header.Get("Content-Type"), tt.ctype)
			}
			if resp.Header.Get("Cache-Control") != tt.cache && tt.cache != "" {
				t.Errorf("got Cache-Control %q, want %q", resp.Header.Get("Cache-Control"), tt.cache)
			}
		})
	}
}

func TestRouting(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	tests := []struct {
		method, path string
		status       int
	}{
		{"GET", "/nope", 404},
		{"DELETE", "/devices", 405},
		{"GET", "/devices/aaaaaaaaaaaaaaaa/suspend", 405},
		{"GET", "/devices/aaaaaaaaaaaaaaaa/nope", 404},
		{"GET", "/favicon.ico", 204},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, e.TS.URL+tt.path, nil)
			resp, body := b.Do(req)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status >= 400 && !strings.Contains(body, "<html") {
				t.Fatal("error is not a page")
			}
		})
	}
	t.Run("signed out", func(t *testing.T) {
		resp, _ := e.NewBrowser().Get("/devices?q=x")
		if got, want := resp.Header.Get("Location"), "/login?next="+url.QueryEscape("/devices?q=x"); resp.StatusCode != 303 || got != want {
			t.Fatalf("got %d to %q, want 303 to %q", resp.StatusCode, got, want)
		}
		resp, _ = e.NewBrowser().Post("/devices/aaaaaaaaaaaaaaaa/suspend", url.Values{"csrf": {"x"}})
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("POST signed out: got %d, want 403", resp.StatusCode)
		}
	})
}

// fakeLog is an audit log whose matching records have the given sequence
// numbers; the records in between match no filter used here.
type fakeLog struct {
	seqs    []int64
	queries int
}

func (l *fakeLog) service() *mock.AuditService {
	return &mock.AuditService{
		FindAuditRecordsFn: func(ctx context.Context, f pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
			l.queries++
			limit := f.Limit
			if limit == 0 {
				limit = 100
			}
			limit = min(limit, 1000)
			var out []*pylon.AuditRecord
			add := func(seq int64) bool {
				if seq <= f.After {
					return true
				}
				out = append(out, &pylon.AuditRecord{Seq: seq, Action: "x.y", Object: "device:z", Actor: "system", Time: time.Unix(seq, 0)})
				return len(out) < limit
			}
			if f.Desc {
				for i := len(l.seqs) - 1; i >= 0 && add(l.seqs[i]); i-- {
				}
			} else {
				for i := 0; i < len(l.seqs) && add(l.seqs[i]); i++ {
				}
			}
			return out, nil
		},
		VerifyAuditFn: func(ctx context.Context) (pylon.AuditVerification, error) {
			return pylon.AuditVerification{OK: true}, nil
		},
	}
}

func seqRange(from, to, step int64) []int64 {
	var s []int64
	for n := from; n <= to; n += step {
		s = append(s, n)
	}
	return s
}

func TestAudit_PagingSparseLogs(t *testing.T) {
	tests := []struct {
		name string
		seqs []int64
	}{
		{"dense", seqRange(1, 300, 1)},
		{"sparse", seqRange(5, 200*997, 997)},
		{"gap, then dense", append(append(seqRange(1, 1700, 1), seqRange(3301, 3360, 1)...), seqRange(3400, 3420, 2)...)},
		{"huge gap", append(seqRange(1, 60, 1), seqRange(1_000_001, 1_000_060, 1)...)},
		{"one record", []int64{123456}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := MustNewEnv(t)
			admin, _ := e.MustToken(pylon.RoleAdmin)
			log := &fakeLog{seqs: tt.seqs}
			e.Server.Audit = log.service()
			b := e.MustSignIn(admin)
			var got []int64
			path, pages := "/audit?action=x.y", 0
			for path != "" {
				if pages++; pages > 100 {
					t.Fatal("too many pages")
				}
				log.queries = 0
				resp, body := b.Get(path)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: got %d: %.300s", path, resp.StatusCode, body)
				}
				if log.queries > 50 {
					t.Fatalf("GET %s: %d queries", path, log.queries)
				}
				for _, r := range seqRE.FindAllStringSubmatch(body, -1) {
					var n int64
					fmt.Sscan(r[1], &n)
					got = append(got, n)
				}
				path = ""
				if m := olderRE.FindStringSubmatch(body); m != nil {
					path = strings.ReplaceAll(m[1], "&amp;", "&")
				}
			}
			if len(got) != len(tt.seqs) {
				t.Fatalf("got %d records, want %d", len(got), len(tt.seqs))
			}
			for i, n := range got {
				if want := tt.seqs[len(tt.seqs)-1-i]; n != want {
					t.Fatalf("record %d: got seq %d, want %d", i, n, want)
				}
			}
			if want := (len(tt.seqs) + 49) / 50; pages != want {
				t.Fatalf("got %d pages, want %d", pages, want)
			}
		})
	}
}

// TestActions_EveryPostNeedsCSRFAndRole posts to every state-changing route
// of the dashboard without a CSRF token, and as a viewer with one: each is
// refused, and nothing changes.
func TestActions_EveryPostNeedsCSRFAndRole(t *testing.T) {
	e := MustNewEnv(t)
	ctx := context.Background()
	admin, _ := e.MustToken(pylon.RoleAdmin)
	viewerSecret, _ := e.MustToken(pylon.RoleViewer)
	active := e.MustDevice("active-1", nil)
	suspended := e.MustDevice("suspended-1", nil)
	for _, step := range []struct {
		d  *pylon.Device
		to []pylon.DeviceState
	}{{active, []pylon.DeviceState{pylon.DeviceActive}}, {suspended, []pylon.DeviceState{pylon.DeviceActive, pylon.DeviceSuspended}}} {
		for _, st := range step.to {
			if _, err := e.Devices.TransitionDevice(ctx, step.d.ID, st); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, tokID, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	if err := e.EnrollTokens.CreateEnrollmentToken(ctx, &pylon.EnrollmentToken{ID: tokID, DeviceID: active.ID, Uses: 1, ExpiresAt: e.Now().Add(time.Hour), CreatedAt: e.Now()}, hash); err != nil {
		t.Fatal(err)
	}
	state := func() string {
		a, _ := e.Devices.FindDeviceByID(ctx, active.ID)
		s, _ := e.Devices.FindDeviceByID(ctx, suspended.ID)
		toks, _ := e.EnrollTokens.FindEnrollmentTokens(ctx, false)
		revoked := 0
		for _, tok := range toks {
			if tok.RevokedAt != nil {
				revoked++
			}
		}
		return fmt.Sprintf("%s %s tokens=%d revoked=%d", a.State, s.State, len(toks), revoked)
	}
	before := state()

	routes := []struct {
		path     string
		form     url.Values
		operates bool // needs more than read access
	}{
		{"/logout", nil, false},
		{"/devices/" + active.ID + "/suspend", nil, true},
		{"/devices/" + suspended.ID + "/resume", nil, true},
		{"/devices/" + active.ID + "/decommission", nil, true},
		{"/tokens", url.Values{"device_id": {active.ID}}, true},
		{"/tokens", url.Values{"labels": {"site=lab"}, "uses": {"5"}}, true},
		{"/tokens/" + tokID + "/revoke", nil, true},
	}
	a, v := e.MustSignIn(admin), e.MustSignIn(viewerSecret)
	viewerCSRF := v.MustCSRF("/")
	for _, rt := range routes {
		t.Run(rt.path, func(t *testing.T) {
			form := url.Values{}
			for k, vals := range rt.form {
				form[k] = vals
			}
			if resp, body := a.Post(rt.path, form); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
				t.Errorf("without a CSRF token: got %d, want 403 naming the CSRF token", resp.StatusCode)
			}
			form.Set("csrf", viewerCSRF)
			if resp, body := a.Post(rt.path, form); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
				t.Errorf("with another session's CSRF token: got %d, want 403", resp.StatusCode)
			}
			if !rt.operates {
				return
			}
			if resp, _ := v.Post(rt.path, form); resp.StatusCode != http.StatusForbidden {
				t.Errorf("as a viewer with its CSRF token: got %d, want 403", resp.StatusCode)
			}
		})
	}
	if got := state(); got != before {
		t.Fatalf("refused posts changed the state: got %q, want %q", got, before)
	}
	// The admin's session still works: /logout was refused too.
	if resp, _ := a.Get("/devices"); resp.StatusCode != http.StatusOK {
		t.Fatalf("admin session after the refused sign-out: got %d, want 200", resp.StatusCode)
	}
}
