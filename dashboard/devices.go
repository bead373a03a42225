package dashboard

import (
	"cmp"
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/pylonhq/pylon"
)

// Page sizes of the device pages.
const (
	devicesPerPage   = 50
	connectionsShown = 20
	certsShown       = 20
	deviceAuditShown = 20
	maxCursorLen     = 128
)

// deviceQuery is the filter form of the device list, as the user typed it.
type deviceQuery struct {
	Q, Label, State, Online, Cursor string
}

// values returns the query's URL parameters, without the cursor.
func (q deviceQuery) values() url.Values {
	v := url.Values{}
	for k, val := range map[string]string{"q": q.Q, "label": q.Label, "state": q.State, "online": q.Online} {
		if val != "" {
			v.Set(k, val)
		}
	}
	return v
}

// filter turns the form into a store filter. Returns EINVALID.
func (q deviceQuery) filter() (pylon.DeviceFilter, error) {
	f := pylon.DeviceFilter{Query: q.Q, Cursor: q.Cursor, Limit: devicesPerPage}
	if len(q.Q) > pylon.MaxDeviceNameLen {
		return f, pylon.Errorf(pylon.EINVALID, "search: longer than %d bytes", pylon.MaxDeviceNameLen)
	}
	if q.Label != "" {
		k, v, ok := strings.Cut(q.Label, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return f, pylon.Errorf(pylon.EINVALID, "label: use the form key=value")
		}
		labels := map[string]string{k: v}
		if err := pylon.ValidateLabels(labels); err != nil {
			return f, err
		}
		f.Labels = labels
	}
	if q.State != "" {
		st := pylon.DeviceState(q.State)
		if !st.Valid() {
			return f, pylon.Errorf(pylon.EINVALID, "state: unknown state")
		}
		f.State = &st
	}
	switch q.Online {
	case "":
	case "yes", "no":
		on := q.Online == "yes"
		f.Online = &on
	default:
		return f, pylon.Errorf(pylon.EINVALID, "online: must be yes or no")
	}
	if len(q.Cursor) > maxCursorLen {
		return f, pylon.Errorf(pylon.EINVALID, "cursor: invalid")
	}
	return f, nil
}

type devicesData struct {
	Query   deviceQuery
	States  []pylon.DeviceState
	Devices []*pylon.Device
	Next    string // URL of the next page; "" on the last
	First   string // URL of the first page; "" on the first
}

// handleDevices lists one page of devices. It uses the store's cursor
// paging, so each page costs one indexed query at any fleet size.
func (s *Server) handleDevices(w http.ResponseWriter, r *http.Request, u *user) {
	p := r.URL.Query()
	q := deviceQuery{
		Q: bounded(p.Get("q")), Label: bounded(p.Get("label")), State: bounded(p.Get("state")),
		Online: bounded(p.Get("online")), Cursor: bounded(p.Get("cursor")),
	}
	d := devicesData{Query: q, States: lifecycle}
	v := s.newView(u, "devices", "Devices", &d)
	f, err := q.filter()
	if err == nil {
		var next string
		d.Devices, next, err = s.Devices.FindDevices(r.Context(), f)
		if next != "" {
			vals := q.values()
			vals.Set("cursor", next)
			d.Next = "/devices?" + vals.Encode()
		}
	}
	if q.Cursor != "" {
		d.First = "/devices"
		if vals := q.values(); len(vals) > 0 {
			d.First += "?" + vals.Encode()
		}
	}
	status := http.StatusOK
	if err != nil {
		status = statusOf[pylon.ErrorCode(err)]
		if status == 0 {
			status = http.StatusInternalServerError
		}
		v.Error = s.userMessage(r, err)
		d.Devices, d.Next = nil, ""
	}
	s.render(w, r, status, "devices", v)
}

// bounded cuts a query parameter to maxParamLen bytes; longer values fail
// validation later anyway.
func bounded(s string) string {
	if len(s) > maxParamLen {
		return s[:maxParamLen]
	}
	return s
}

// connChart is the data of the connection timeline: comma-separated Unix
// times and online (1) or offline (0), oldest first.
type connChart struct {
	X, Y string
}

type deviceData struct {
	Device       *pylon.Device
	Metadata     string
	Connections  []*pylon.ConnectionEvent
	Certificates []*pylon.Certificate
	Audit        []*pylon.AuditRecord
	Chart        *connChart
	Current      *pylon.Certificate // the newest usable certificate, if any
	Telemetry    *telemetryData
	CanSuspend   bool
	CanResume    bool
	CanRetire    bool // decommission
}

// handleDevice shows one device.
func (s *Server) handleDevice(w http.ResponseWriter, r *http.Request, u *user) {
	d, ok := s.loadDevice(w, r)
	if !ok {
		return
	}
	ctx, id := r.Context(), d.Device.ID
	var err error
	if d.Connections, err = s.Devices.FindConnections(ctx, id, connectionsShown); err != nil {
		s.fail(w, r, err)
		return
	}
	if d.Certificates, err = s.Certs.FindCertificates(ctx, pylon.CertificateFilter{DeviceID: &id, Limit: certsShown}); err != nil {
		s.fail(w, r, err)
		return
	}
	if d.Audit, err = s.deviceAudit(ctx, id, d.Certificates); err != nil {
		s.fail(w, r, err)
		return
	}
	for _, c := range d.Certificates { // newest first
		if c.Usable(s.now()) {
			d.Current = c
			break
		}
	}
	d.Metadata = prettyJSON(d.Device.Metadata)
	d.Chart = s.connectionChart(d.Device, d.Connections)
	d.Telemetry = s.loadTelemetry(r, id)
	v := s.newView(u, "devices", d.Device.Name, d)
	v.Chart = (d.Chart != nil || d.Telemetry.Enabled) && v.HasChart
	v.Live = d.Telemetry.Enabled
	v.Notice = transitionNotice[r.URL.Query().Get("done")]
	s.render(w, r, http.StatusOK, "device", v)
}

// deviceAudit returns the newest deviceAuditShown audit records about the
// device: those whose object is the device or one of certs, and those the
// device did itself (renewals, refused connections). It costs one indexed
// query each.
func (s *Server) deviceAudit(ctx context.Context, id string, certs []*pylon.Certificate) ([]*pylon.AuditRecord, error) {
	filters := []pylon.AuditFilter{{Object: "device:" + id}, {Actor: pylon.Principal{Kind: pylon.PrincipalDevice, ID: id}.Actor()}}
	for _, c := range certs {
		filters = append(filters, pylon.AuditFilter{Object: "certificate:" + c.Serial})
	}
	seen := map[int64]bool{}
	var recs []*pylon.AuditRecord
	for _, f := range filters {
		f.Desc, f.Limit = true, deviceAuditShown
		found, err := s.Audit.FindAuditRecords(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, rec := range found {
			if !seen[rec.Seq] {
				seen[rec.Seq] = true
				recs = append(recs, rec)
			}
		}
	}
	slices.SortFunc(recs, func(a, b *pylon.AuditRecord) int { return cmp.Compare(b.Seq, a.Seq) })
	if len(recs) > deviceAuditShown {
		recs = recs[:deviceAuditShown]
	}
	return recs, nil
}

var transitionNotice = map[string]string{
	string(pylon.DeviceSuspended):      "Device suspended; its MQTT session was closed.",
	string(pylon.DeviceActive):         "Device resumed.",
	string(pylon.DeviceDecommissioned): "Device decommissioned; its certificates are revoked.",
}

// loadDevice finds the device of the request's path, or renders the error.
func (s *Server) loadDevice(w http.ResponseWriter, r *http.Request) (*deviceData, bool) {
	id := r.PathValue("id")
	if !pylon.ValidID(id) {
		s.renderError(w, r, http.StatusNotFound, "There is no such device.")
		return nil, false
	}
	dev, err := s.Devices.FindDeviceByID(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return nil, false
	}
	return &deviceData{
		Device:     dev,
		CanSuspend: dev.State.CanTransition(pylon.DeviceSuspended),
		CanResume:  dev.State == pylon.DeviceSuspended,
		CanRetire:  dev.State.CanTransition(pylon.DeviceDecommissioned),
	}, true
}

// connectionChart returns the step chart of the device's recent
// connections, or nil without any.
func (s *Server) connectionChart(d *pylon.Device, events []*pylon.ConnectionEvent) *connChart {
	if len(events) == 0 {
		return nil
	}
	var xs, ys []string
	for i := len(events) - 1; i >= 0; i-- { // events are newest first
		xs = append(xs, strconv.FormatInt(events[i].At.Unix(), 10))
		ys = append(ys, onlineValue(events[i].Online))
	}
	xs = append(xs, strconv.FormatInt(s.now().Unix(), 10))
	ys = append(ys, onlineValue(d.Online))
	return &connChart{X: strings.Join(xs, ","), Y: strings.Join(ys, ",")}
}

func onlineValue(on bool) string {
	if on {
		return "1"
	}
	return "0"
}

// handleDecommissionForm asks for confirmation before decommissioning.
func (s *Server) handleDecommissionForm(w http.ResponseWriter, r *http.Request, u *user) {
	if !u.Role.Allows(pylon.PermOperate) {
		s.renderError(w, r, http.StatusForbidden, "Your API token's role ("+string(u.Role)+") may not do this.")
		return
	}
	d, ok := s.loadDevice(w, r)
	if !ok {
		return
	}
	if !d.CanRetire {
		s.renderError(w, r, http.StatusConflict, "The device is already decommissioned.")
		return
	}
	s.render(w, r, http.StatusOK, "decommission", s.newView(u, "devices", "Decommission "+d.Device.Name, d))
}

// handleTransition moves a device to state next and, for suspend and
// decommission, closes its live MQTT session.
func (s *Server) handleTransition(next pylon.DeviceState) func(w http.ResponseWriter, r *http.Request, u *user) {
	return func(w http.ResponseWriter, r *http.Request, u *user) {
		id := r.PathValue("id")
		if !pylon.ValidID(id) {
			s.renderError(w, r, http.StatusNotFound, "There is no such device.")
			return
		}
		ctx := r.Context()
		d, err := s.Devices.TransitionDevice(ctx, id, next)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.log.Info("device state changed", "device", id, "state", d.State, "by", u.Actor)
		if next == pylon.DeviceSuspended || next == pylon.DeviceDecommissioned {
			s.disconnect(r, id, string(next))
		}
		redirect(w, r, "/devices/"+id+"?done="+string(next))
	}
}

// disconnect drops the device's live MQTT session. A failure is logged,
// not shown: the state change has happened, and the broker refuses the
// device at its next CONNECT anyway.
func (s *Server) disconnect(r *http.Request, deviceID, reason string) {
	if s.Sessions == nil {
		return
	}
	if err := s.Sessions.DisconnectDevice(r.Context(), deviceID, reason); err != nil {
		s.log.Warn("disconnect device", "device", deviceID, "reason", reason, "err", err)
	}
}
