// Package dashboard serves Pylon's web dashboard: server-rendered pages
// (html/template) for the fleet, its devices, enrollment tokens and the
// audit log, with a little vanilla JavaScript from static files. Templates
// and assets are embedded in the binary with go:embed.
//
// Server is an http.Handler meant to be mounted at "/" behind httpapi,
// which routes /api/, /.well-known/, /healthz and /metrics itself. It talks
// to the platform only through the root package's service interfaces.
//
// # Sign-in and sessions
//
// People sign in with an API token. The dashboard then keeps a server-side
// session, in memory only: sessions do not survive a restart, and everyone
// signs in again after one. A session lasts at most SessionTTL from sign-in,
// active or not, and at most MaxSessions exist at once (the oldest goes
// first). Its cookie, pylon_session, is Secure, HttpOnly, SameSite=Strict.
// The API token behind a session is re-checked at most every
// TokenRecheckInterval, so a revoked or expired token ends its sessions
// within that time. Every store call runs with the token's principal in the
// context, so audit records name the actor.
//
// # Security
//
// Every state change is a POST carrying the session's CSRF token (form
// field "csrf" or header X-CSRF-Token), and a POST whose Origin header names
// another host is refused. A role without PermOperate sees no buttons it
// cannot use, and its POSTs are refused anyway. Every page is sent with a
// strict Content-Security-Policy that allows no inline script or style.
//
// # Telemetry
//
// With a TelemetryService and an EventService (both optional; without them
// the pages say that telemetry is not enabled), the device page shows the
// latest value of each reading name, one chart per numeric name (up to
// MaxCharts, then a selector) over a picked range (15 min to 7 days), and
// the messages the platform refused. A chart's history comes from
// GET /devices/{id}/readings.json?name=&range=: raw readings up to
// MaxRawPoints, averages of time buckets beyond, gzip-compressed when large
// (a history holds no secret, so compression leaks none). Live updates come from
// GET /devices/{id}/events, Server-Sent Events authenticated by the session
// cookie, same-origin only, at most MaxStreamsPerSession per session and
// MaxStreams in all; a stream is pinged, re-checks its session at each
// ping, and ends with the session, the client, Close or the HTTP server's
// Shutdown. Besides readings and refused messages, a stream carries the
// device's connection and lifecycle state, polled from the store every
// StatePollInterval, so that the page shows a device come online, go
// offline or be suspended without a reload. The fleet page shows messages
// and refused messages per second, counted in memory from one fleet
// subscription that starts with the first request and lasts until Close,
// and the newest refused messages; GET /stats.json refreshes the rates and
// the online and offline counts.
//
// Everything a device chose (names, units, string values, refusal reasons)
// reaches the page through html/template or, live, as JSON that
// static/telemetry.js sets as text, never as HTML.
//
// # Assets
//
// Our own CSS and JavaScript live in static/. Front-end libraries (uPlot
// for charts) come from npm with a lockfile in web/; build-assets.sh (run it
// with go generate) copies them into static/vendor/, which is not committed.
// Without it the dashboard still works, without charts.
package dashboard

//go:generate bash build-assets.sh
