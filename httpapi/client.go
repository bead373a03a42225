package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// Client limits.
const (
	clientTimeout     = 60 * time.Second
	maxResponseBody   = 64 << 20 // a full page of devices with large metadata
	maxErrorBody      = 64 << 10
	errUnexpectedBody = "unexpected response from server"
)

// Client calls the REST API. Errors the server reports come back as
// *pylon.Error with the server's code and message.
type Client struct {
	BaseURL string // e.g. "https://localhost:8443", without a trailing slash
	Token   string // API token, sent as "Authorization: Bearer"
	HTTP    *http.Client
}

// NewClient returns a client of the server at baseURL. If caPEM holds
// certificates, they are the only roots trusted for the server's
// certificate (the platform CA, pinned); otherwise the system roots are.
// Plain http is refused except to a loopback address.
func NewClient(baseURL, token string, caPEM []byte) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("invalid server URL %q: want https://host[:port]", baseURL)
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("refusing plain http to %s: use https", u.Host)
		}
	default:
		return nil, fmt.Errorf("invalid server URL %q: want https://host[:port]", baseURL)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(bytes.TrimSpace(caPEM)) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("CA file holds no PEM certificate")
		}
		tlsConfig.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	tr.Proxy = nil // bearer tokens go straight to the server
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		Token:   token,
		HTTP: &http.Client{
			Transport: tr,
			Timeout:   clientTimeout,
			// The API never redirects; following one could send the token
			// elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// Health returns nil if the server is up and ready, and an *pylon.Error
// with code EUNAVAILABLE if it is not ready.
func (c *Client) Health(ctx context.Context) error {
	var h Health
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil, &h)
}

// Info returns the server's version and public MQTT address.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var info Info
	if err := c.do(ctx, http.MethodGet, "/api/v1/info", nil, nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// CreateDevice registers a device with d's Name, Labels and Metadata and
// returns it as created (d itself is not changed).
func (c *Client) CreateDevice(ctx context.Context, d *pylon.Device) (*pylon.Device, error) {
	req := CreateDeviceRequest{Name: d.Name, Labels: d.Labels, Metadata: d.Metadata}
	var created pylon.Device
	if err := c.do(ctx, http.MethodPost, "/api/v1/devices", nil, req, &created); err != nil {
		return nil, err
	}
	return &created, nil
}

// ListDevices returns a page of devices matching f and the cursor of the
// next page ("" on the last).
func (c *Client) ListDevices(ctx context.Context, f pylon.DeviceFilter) ([]*pylon.Device, string, error) {
	q := url.Values{}
	keys := make([]string, 0, len(f.Labels))
	for k := range f.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		q.Add("label", k+"="+f.Labels[k])
	}
	if f.ID != nil {
		q.Set("id", *f.ID)
	}
	if f.Name != nil {
		q.Set("name", *f.Name)
	}
	if f.State != nil {
		q.Set("state", string(*f.State))
	}
	if f.Query != "" {
		q.Set("q", f.Query)
	}
	if f.Online != nil {
		q.Set("online", strconv.FormatBool(*f.Online))
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var list DeviceList
	if err := c.do(ctx, http.MethodGet, "/api/v1/devices", q, nil, &list); err != nil {
		return nil, "", err
	}
	return list.Devices, list.NextCursor, nil
}

// GetDevice returns the device with the given id.
func (c *Client) GetDevice(ctx context.Context, id string) (*pylon.Device, error) {
	return c.device(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id), nil)
}

// UpdateDevice applies upd to the device.
func (c *Client) UpdateDevice(ctx context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error) {
	return c.device(ctx, http.MethodPatch, "/api/v1/devices/"+url.PathEscape(id), upd)
}

// DeleteDevice removes the device.
func (c *Client) DeleteDevice(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/devices/"+url.PathEscape(id), nil, nil, nil)
}

// SuspendDevice suspends the device and drops its live session.
func (c *Client) SuspendDevice(ctx context.Context, id string) (*pylon.Device, error) {
	return c.device(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/suspend", nil)
}

// ResumeDevice makes a suspended device active again.
func (c *Client) ResumeDevice(ctx context.Context, id string) (*pylon.Device, error) {
	return c.device(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/resume", nil)
}

// DecommissionDevice retires the device for good, revoking its
// certificates and dropping its live session.
func (c *Client) DecommissionDevice(ctx context.Context, id string) (*pylon.Device, error) {
	return c.device(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/decommission", nil)
}

func (c *Client) device(ctx context.Context, method, path string, in any) (*pylon.Device, error) {
	var d pylon.Device
	if err := c.do(ctx, method, path, nil, in, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// DeviceConnections returns the device's newest connection events first;
// limit 0 means the server's default.
func (c *Client) DeviceConnections(ctx context.Context, id string, limit int) ([]*pylon.ConnectionEvent, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var list ConnectionList
	if err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/connections", q, nil, &list); err != nil {
		return nil, err
	}
	return list.Connections, nil
}

// DeviceCertificates returns the device's certificates, newest first.
func (c *Client) DeviceCertificates(ctx context.Context, id string) ([]*pylon.Certificate, error) {
	var list CertificateList
	if err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/certificates", nil, nil, &list); err != nil {
		return nil, err
	}
	return list.Certificates, nil
}

// Stats counts the fleet.
func (c *Client) Stats(ctx context.Context) (pylon.DeviceStats, error) {
	var st pylon.DeviceStats
	err := c.do(ctx, http.MethodGet, "/api/v1/stats", nil, nil, &st)
	return st, err
}

// CreateEnrollmentToken creates an enrollment token. The result holds its
// secret, which the server never shows again.
func (c *Client) CreateEnrollmentToken(ctx context.Context, req EnrollmentTokenRequest) (*EnrollmentTokenCreated, error) {
	var t EnrollmentTokenCreated
	if err := c.do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", nil, req, &t); err != nil {
		return nil, err
	}
	if t.EnrollmentToken == nil {
		return nil, pylon.Errorf(pylon.EINTERNAL, errUnexpectedBody)
	}
	return &t, nil
}

// ListEnrollmentTokens returns enrollment tokens, newest first; with live
// set, only those still usable.
func (c *Client) ListEnrollmentTokens(ctx context.Context, live bool) ([]*pylon.EnrollmentToken, error) {
	q := url.Values{}
	if live {
		q.Set("live", "true")
	}
	var list EnrollmentTokenList
	if err := c.do(ctx, http.MethodGet, "/api/v1/enrollment-tokens", q, nil, &list); err != nil {
		return nil, err
	}
	return list.EnrollmentTokens, nil
}

// GetEnrollmentToken returns the enrollment token with the given id.
func (c *Client) GetEnrollmentToken(ctx context.Context, id string) (*pylon.EnrollmentToken, error) {
	var t pylon.EnrollmentToken
	if err := c.do(ctx, http.MethodGet, "/api/v1/enrollment-tokens/"+url.PathEscape(id), nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// RevokeEnrollmentToken revokes the enrollment token.
func (c *Client) RevokeEnrollmentToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/enrollment-tokens/"+url.PathEscape(id), nil, nil, nil)
}

// ListCertificates returns matching certificates, newest first.
func (c *Client) ListCertificates(ctx context.Context, f pylon.CertificateFilter) ([]*pylon.Certificate, error) {
	q := url.Values{}
	if f.DeviceID != nil {
		q.Set("device_id", *f.DeviceID)
	}
	if f.Status != nil {
		q.Set("status", string(*f.Status))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var list CertificateList
	if err := c.do(ctx, http.MethodGet, "/api/v1/certificates", q, nil, &list); err != nil {
		return nil, err
	}
	return list.Certificates, nil
}

// GetCertificate returns the certificate with the given serial (hex, as
// NormalizeSerial accepts it) with its PEM; DER is set from the PEM.
func (c *Client) GetCertificate(ctx context.Context, serial string) (*CertificateDetail, error) {
	return c.certificate(ctx, http.MethodGet, "/api/v1/certificates/"+url.PathEscape(serial), nil)
}

// RevokeCertificate revokes the certificate for reason (may be "") and
// drops its device's live session.
func (c *Client) RevokeCertificate(ctx context.Context, serial, reason string) (*CertificateDetail, error) {
	return c.certificate(ctx, http.MethodPost, "/api/v1/certificates/"+url.PathEscape(serial)+"/revoke",
		RevokeCertificateRequest{Reason: reason})
}

func (c *Client) certificate(ctx context.Context, method, path string, in any) (*CertificateDetail, error) {
	var d CertificateDetail
	if err := c.do(ctx, method, path, nil, in, &d); err != nil {
		return nil, err
	}
	if d.Certificate == nil {
		return nil, pylon.Errorf(pylon.EINTERNAL, errUnexpectedBody)
	}
	if block, _ := pem.Decode([]byte(d.PEM)); block != nil && block.Type == "CERTIFICATE" {
		d.DER = block.Bytes
	}
	return &d, nil
}

// CreateAPIToken creates an API token. The result holds its secret, which
// the server never shows again.
func (c *Client) CreateAPIToken(ctx context.Context, req APITokenRequest) (*APITokenCreated, error) {
	var t APITokenCreated
	if err := c.do(ctx, http.MethodPost, "/api/v1/api-tokens", nil, req, &t); err != nil {
		return nil, err
	}
	if t.APIToken == nil {
		return nil, pylon.Errorf(pylon.EINTERNAL, errUnexpectedBody)
	}
	return &t, nil
}

// ListAPITokens returns all API tokens, newest first.
func (c *Client) ListAPITokens(ctx context.Context) ([]*pylon.APIToken, error) {
	var list APITokenList
	if err := c.do(ctx, http.MethodGet, "/api/v1/api-tokens", nil, nil, &list); err != nil {
		return nil, err
	}
	return list.APITokens, nil
}

// RevokeAPIToken revokes the API token.
func (c *Client) RevokeAPIToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/api-tokens/"+url.PathEscape(id), nil, nil, nil)
}

// ListAudit returns the audit records matching f.
func (c *Client) ListAudit(ctx context.Context, f pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
	q := url.Values{}
	if f.Object != "" {
		q.Set("object", f.Object)
	}
	if f.Actor != "" {
		q.Set("actor", f.Actor)
	}
	if f.Action != "" {
		q.Set("action", f.Action)
	}
	if f.Since != nil {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if f.Until != nil {
		q.Set("until", f.Until.Format(time.RFC3339Nano))
	}
	if f.After > 0 {
		q.Set("after", strconv.FormatInt(f.After, 10))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.Desc {
		q.Set("order", "desc")
	}
	var list AuditList
	if err := c.do(ctx, http.MethodGet, "/api/v1/audit", q, nil, &list); err != nil {
		return nil, err
	}
	return list.Records, nil
}

// VerifyAudit has the server check the audit log's hash chain.
func (c *Client) VerifyAudit(ctx context.Context) (pylon.AuditVerification, error) {
	var v pylon.AuditVerification
	err := c.do(ctx, http.MethodGet, "/api/v1/audit/verify", nil, nil, &v)
	return v, err
}

// ListReadings returns a page of the readings f selects and the cursor of
// the next page ("" on the last).
func (c *Client) ListReadings(ctx context.Context, f pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
	var list ReadingList
	if err := c.do(ctx, http.MethodGet, readingsPath(f.DeviceID), readingsQueryValues(f), nil, &list); err != nil {
		return nil, "", err
	}
	return list.Readings, list.NextCursor, nil
}

// LatestReadings returns the newest reading of each name of the device.
func (c *Client) LatestReadings(ctx context.Context, deviceID string) ([]*pylon.Reading, error) {
	var list LatestReadingList
	if err := c.do(ctx, http.MethodGet, readingsPath(deviceID)+"/latest", nil, nil, &list); err != nil {
		return nil, err
	}
	return list.Readings, nil
}

// AggregateReadings returns the buckets f asks for. A zero f.To means now
// and a zero f.From one hour before f.To; a zero f.Bucket means one minute.
func (c *Client) AggregateReadings(ctx context.Context, f pylon.AggregateFilter) ([]*pylon.Bucket, error) {
	q := url.Values{}
	q.Set("agg", f.Agg)
	q.Set("name", f.Name)
	if f.Bucket != 0 {
		q.Set("bucket", f.Bucket.String())
	}
	if !f.From.IsZero() {
		q.Set("from", f.From.Format(time.RFC3339Nano))
	}
	if !f.To.IsZero() {
		q.Set("to", f.To.Format(time.RFC3339Nano))
	}
	var list BucketList
	if err := c.do(ctx, http.MethodGet, readingsPath(f.DeviceID), q, nil, &list); err != nil {
		return nil, err
	}
	return list.Buckets, nil
}

// ReadingsCSV writes the readings f selects to w as CSV (see the server's
// export format), all pages of them; f.Limit caps the rows (0: the server's
// MaxCSVRows). A transfer the server broke off returns an error, though w
// may already hold part of the export. Only ctx bounds how long it takes.
func (c *Client) ReadingsCSV(ctx context.Context, f pylon.ReadingFilter, w io.Writer) error {
	path := readingsPath(f.DeviceID)
	q := readingsQueryValues(f)
	q.Set("format", "csv")
	resp, err := c.sendWith(ctx, c.streamHTTP(), "text/csv", http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/csv" {
		return pylon.Errorf(pylon.EINTERNAL, errUnexpectedBody)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET %s: read CSV: %w", path, err)
	}
	return nil
}

// Quarantine returns refused telemetry messages, newest first: those of
// deviceID, or of the whole fleet if it is "". limit 0 means the server's
// default.
func (c *Client) Quarantine(ctx context.Context, deviceID string, limit int) ([]*pylon.QuarantinedMessage, error) {
	path := "/api/v1/quarantine"
	if deviceID != "" {
		path = "/api/v1/devices/" + url.PathEscape(deviceID) + "/quarantine"
	}
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var list QuarantineList
	if err := c.do(ctx, http.MethodGet, path, q, nil, &list); err != nil {
		return nil, err
	}
	return list.Messages, nil
}

// StreamEvents calls fn with each live event of deviceID, or of the whole
// fleet if it is "", in the order the server sends them. It returns nil
// when the server ends the stream (as it does when shutting down),
// ctx.Err() when ctx ends, fn's error if fn fails, and an error for a
// broken stream or a line longer than MaxEventLine.
func (c *Client) StreamEvents(ctx context.Context, deviceID string, fn func(pylon.Event) error) error {
	path := "/api/v1/events"
	if deviceID != "" {
		path = "/api/v1/devices/" + url.PathEscape(deviceID) + "/events"
	}
	resp, err := c.sendWith(ctx, c.streamHTTP(), "text/event-stream", http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return pylon.Errorf(pylon.EINTERNAL, errUnexpectedBody)
	}
	err = readEvents(resp.Body, fn)
	var stop errStopEvents
	switch {
	case errors.As(err, &stop):
		return stop.err
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// errStopEvents wraps an error of the callback of readEvents, to tell it
// from a read error.
type errStopEvents struct{ err error }

func (e errStopEvents) Error() string { return e.err.Error() }
func (e errStopEvents) Unwrap() error { return e.err }

// readEvents parses a Server-Sent Events stream (lines end in LF or CRLF)
// and calls fn with each event whose data is a JSON pylon.Event. An event
// without a type in its JSON takes the type of its "event:" line. Comments
// and the id and retry fields are ignored.
func readEvents(r io.Reader, fn func(pylon.Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxEventLine+2) // the line and its CRLF
	var (
		name string
		data []byte
	)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if len(data) > 0 {
				var ev pylon.Event
				if err := json.Unmarshal(data, &ev); err != nil {
					return fmt.Errorf("decode event: %w", err)
				}
				if ev.Type == "" {
					ev.Type = name
				}
				if err := fn(ev); err != nil {
					return errStopEvents{err}
				}
			}
			name, data = "", data[:0]
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			name = string(value)
		case "data":
			if len(data)+len(value)+1 > MaxEventLine {
				return fmt.Errorf("event data longer than %d bytes", MaxEventLine)
			}
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, value...)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("event stream line longer than %d bytes", MaxEventLine)
		}
		return fmt.Errorf("read event stream: %w", err)
	}
	return nil
}

// readingsPath is the readings endpoint of a device.
func readingsPath(deviceID string) string {
	return "/api/v1/devices/" + url.PathEscape(deviceID) + "/readings"
}

// readingsQueryValues encodes f as the query of a readings request.
func readingsQueryValues(f pylon.ReadingFilter) url.Values {
	q := url.Values{}
	if f.Name != "" {
		q.Set("name", f.Name)
	}
	if f.From != nil {
		q.Set("from", f.From.Format(time.RFC3339Nano))
	}
	if f.To != nil {
		q.Set("to", f.To.Format(time.RFC3339Nano))
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.Desc {
		q.Set("order", "desc")
	}
	return q
}

// streamHTTP returns the HTTP client for long responses: c.HTTP without
// its overall timeout, so that only the caller's context ends them.
func (c *Client) streamHTTP() *http.Client {
	if c.HTTP == nil {
		return nil
	}
	hc := *c.HTTP
	hc.Timeout = 0
	return &hc
}

// CRL returns the current DER-encoded certificate revocation list.
func (c *Client) CRL(ctx context.Context) ([]byte, error) {
	return c.raw(ctx, "/api/v1/ca/crl")
}

// CACert returns the platform's CA certificates as PEM.
func (c *Client) CACert(ctx context.Context) ([]byte, error) {
	return c.raw(ctx, "/api/v1/ca/cert")
}

// raw GETs path and returns the body as is.
func (c *Client) raw(ctx context.Context, path string) ([]byte, error) {
	resp, err := c.send(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read response: %w", path, err)
	}
	return b, nil
}

// do sends in (if not nil) as JSON and decodes a JSON answer into out (if
// not nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	resp, err := c.send(ctx, method, path, q, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxResponseBody)
	if out == nil {
		io.Copy(io.Discard, body)
		return nil
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// send makes the request and returns a response with a 2xx status, or the
// server's error.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, in any) (*http.Response, error) {
	return c.sendWith(ctx, c.HTTP, "application/json", method, path, q, in)
}

// sendWith is send with the given HTTP client (nil: the default) and
// Accept header.
func (c *Client) sendWith(ctx context.Context, hc *http.Client, accept, method, path string, q url.Values, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, fmt.Errorf("new request: %w", err)
	}
	if len(q) > 0 {
		req.URL.RawQuery = q.Encode()
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", accept)
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	return resp, nil
}

// responseError decodes the server's error body into a *pylon.Error. A
// response without one gets the code of its status.
func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var e ErrorResponse
	if err := json.Unmarshal(b, &e); err == nil && e.Error.Code != "" {
		return &pylon.Error{Code: e.Error.Code, Message: e.Error.Message}
	}
	code, ok := codeOf[resp.StatusCode]
	if !ok {
		code = pylon.EINTERNAL
	}
	return pylon.Errorf(code, "unexpected HTTP status %s", resp.Status)
}
