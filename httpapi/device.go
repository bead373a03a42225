package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/pylonhq/pylon"
)

// DefaultConnectionLimit is how many connection events
// GET /api/v1/devices/{id}/connections returns without ?limit=.
const DefaultConnectionLimit = 100

// CreateDeviceRequest is the body of POST /api/v1/devices.
type CreateDeviceRequest struct {
	Name     string            `json:"name"`
	Labels   map[string]string `json:"labels,omitempty"`
	Metadata json.RawMessage   `json:"metadata,omitempty"`
}

// DeviceList is the body of GET /api/v1/devices.
type DeviceList struct {
	Devices    []*pylon.Device `json:"devices"`
	NextCursor string          `json:"next_cursor,omitempty"` // "" on the last page
}

// ConnectionList is the body of GET /api/v1/devices/{id}/connections.
type ConnectionList struct {
	Connections []*pylon.ConnectionEvent `json:"connections"`
}

// CertificateList is the body of GET /api/v1/certificates and
// GET /api/v1/devices/{id}/certificates.
type CertificateList struct {
	Certificates []*pylon.Certificate `json:"certificates"`
}

func (s *Server) handleCreateDevice(w http.ResponseWriter, r *http.Request) {
	var req CreateDeviceRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		Error(w, r, err)
		return
	}
	d := &pylon.Device{Name: req.Name, Labels: req.Labels, Metadata: req.Metadata}
	if bytes.Equal(d.Metadata, []byte("null")) {
		d.Metadata = nil
	}
	if d.Labels == nil {
		d.Labels = map[string]string{}
	}
	if err := d.Validate(); err != nil {
		Error(w, r, err)
		return
	}
	if err := s.Devices.CreateDevice(r.Context(), d); err != nil {
		Error(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/devices/"+d.ID)
	writeJSON(w, http.StatusCreated, d)
}

// deviceFilter parses the query of GET /api/v1/devices:
// label=k=v (repeatable, all must match), state, q, name, id,
// online=true|false, cursor and limit.
func deviceFilter(r *http.Request) (pylon.DeviceFilter, error) {
	q := r.URL.Query()
	var f pylon.DeviceFilter
	if labels := q["label"]; len(labels) > 0 {
		if len(labels) > pylon.MaxLabels {
			return f, pylon.Errorf(pylon.EINVALID, "label: more than %d", pylon.MaxLabels)
		}
		f.Labels = make(map[string]string, len(labels))
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return f, pylon.Errorf(pylon.EINVALID, "label: must be key=value")
			}
			if _, dup := f.Labels[k]; dup {
				return f, pylon.Errorf(pylon.EINVALID, "label: key %q given twice", truncate(k, 70))
			}
			f.Labels[k] = v
		}
		if err := pylon.ValidateLabels(f.Labels); err != nil {
			return f, err
		}
	}
	if v := q.Get("state"); v != "" {
		st := pylon.DeviceState(v)
		if !st.Valid() {
			return f, pylon.Errorf(pylon.EINVALID, "state: must be registered, active, suspended or decommissioned")
		}
		f.State = &st
	}
	var err error
	if f.Query, err = queryString(q, "q", pylon.MaxDeviceNameLen); err != nil {
		return f, err
	}
	if v := q.Get("name"); v != "" {
		if err := pylon.ValidateDeviceName(v); err != nil {
			return f, err
		}
		f.Name = &v
	}
	if v := q.Get("id"); v != "" {
		if !pylon.ValidID(v) {
			return f, pylon.Errorf(pylon.EINVALID, "id: not a device id")
		}
		f.ID = &v
	}
	if f.Online, err = queryBool(q, "online"); err != nil {
		return f, err
	}
	if f.Cursor, err = queryString(q, "cursor", maxCursorLen); err != nil {
		return f, err
	}
	if f.Limit, err = queryLimit(q, pylon.MaxDeviceLimit); err != nil {
		return f, err
	}
	return f, nil
}

func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request) {
	f, err := deviceFilter(r)
	if err != nil {
		Error(w, r, err)
		return
	}
	devices, next, err := s.Devices.FindDevices(r.Context(), f)
	if err != nil {
		Error(w, r, err)
		return
	}
	if devices == nil {
		devices = []*pylon.Device{}
	}
	writeJSON(w, http.StatusOK, DeviceList{Devices: devices, NextCursor: next})
}

func (s *Server) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "device")
	if err != nil {
		Error(w, r, err)
		return
	}
	d, err := s.Devices.FindDeviceByID(r.Context(), id)
	if err != nil {
		Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) handleUpdateDevice(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "device")
	if err != nil {
		Error(w, r, err)
		return
	}
	var upd pylon.DeviceUpdate
	if err := decodeJSON(w, r, &upd, false); err != nil {
		Error(w, r, err)
		return
	}
	if err := validateUpdate(upd); err != nil {
		Error(w, r, err)
		return
	}
	d, err := s.Devices.UpdateDevice(r.Context(), id, upd)
	if err != nil {
		Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// validateUpdate checks the fields an update sets.
func validateUpdate(upd pylon.DeviceUpdate) error {
	if upd.Name != nil {
		if err := pylon.ValidateDeviceName(*upd.Name); err != nil {
			return err
		}
	}
	if upd.Labels != nil {
		if err := pylon.ValidateLabels(*upd.Labels); err != nil {
			return err
		}
	}
	if upd.Metadata != nil {
		if err := pylon.ValidateMetadata(*upd.Metadata); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) handleDeleteDevice(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "device")
	if err != nil {
		Error(w, r, err)
		return
	}
	if err := s.Devices.DeleteDevice(r.Context(), id); err != nil {
		Error(w, r, err)
		return
	}
	s.disconnect(r.Context(), id, "deleted")
	w.WriteHeader(http.StatusNoContent)
}

// handleTransition moves a device to state next and, with a reason, drops
// its live MQTT session. With from set, the device must be in that state:
// resume is only for suspended devices, while the store also allows
// registered → active, which belongs to enrollment.
func (s *Server) handleTransition(next, from pylon.DeviceState, disconnectReason string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, "device")
		if err != nil {
			Error(w, r, err)
			return
		}
		if from != "" {
			// No race: a device that has left registered never returns to
			// it, so once seen in from (suspended) the store's own check
			// allows next only from there.
			d, err := s.Devices.FindDeviceByID(r.Context(), id)
			if err != nil {
				Error(w, r, err)
				return
			}
			if d.State != from {
				Error(w, r, pylon.Errorf(pylon.ECONFLICT, "cannot go from %s to %s: the device is not %s", d.State, next, from))
				return
			}
		}
		d, err := s.Devices.TransitionDevice(r.Context(), id, next)
		if err != nil {
			Error(w, r, err)
			return
		}
		if disconnectReason != "" {
			s.disconnect(r.Context(), id, disconnectReason)
		}
		writeJSON(w, http.StatusOK, d)
	}
}

// disconnect drops the device's live MQTT session, if there is a
// SessionService. A failure is logged, not returned: the state change has
// happened, and the broker refuses the device at its next CONNECT anyway.
func (s *Server) disconnect(ctx context.Context, deviceID, reason string) {
	if s.Sessions == nil {
		return
	}
	// The change is made: drop the session even if the client hung up.
	if err := s.Sessions.DisconnectDevice(context.WithoutCancel(ctx), deviceID, reason); err != nil {
		s.log.Warn("disconnect device", "device", deviceID, "reason", reason, "err", err)
	}
}

func (s *Server) handleDeviceConnections(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "device")
	if err != nil {
		Error(w, r, err)
		return
	}
	limit, err := queryLimit(r.URL.Query(), pylon.MaxDeviceLimit)
	if err != nil {
		Error(w, r, err)
		return
	} else if limit == 0 {
		limit = DefaultConnectionLimit
	}
	if _, err := s.Devices.FindDeviceByID(r.Context(), id); err != nil {
		Error(w, r, err)
		return
	}
	events, err := s.Devices.FindConnections(r.Context(), id, limit)
	if err != nil {
		Error(w, r, err)
		return
	}
	if events == nil {
		events = []*pylon.ConnectionEvent{}
	}
	writeJSON(w, http.StatusOK, ConnectionList{Connections: events})
}

func (s *Server) handleDeviceCertificates(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "device")
	if err != nil {
		Error(w, r, err)
		return
	}
	if _, err := s.Devices.FindDeviceByID(r.Context(), id); err != nil {
		Error(w, r, err)
		return
	}
	certs, err := s.Certs.FindCertificates(r.Context(), pylon.CertificateFilter{DeviceID: &id, Limit: MaxListLimit})
	if err != nil {
		Error(w, r, err)
		return
	}
	if certs == nil {
		certs = []*pylon.Certificate{}
	}
	writeJSON(w, http.StatusOK, CertificateList{Certificates: certs})
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.Devices.DeviceStats(r.Context())
	if err != nil {
		Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
