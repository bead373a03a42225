package pylon

import (
	"context"
	"encoding/json"
	"regexp"
	"time"
	"unicode"
	"unicode/utf8"
)

// DeviceState is where a device stands in its lifecycle:
//
//	registered → active (first enrollment) → suspended ⇄ active → decommissioned
//
// Any state but decommissioned may also go to decommissioned, which is
// terminal.
type DeviceState string

// Device states.
const (
	DeviceRegistered     DeviceState = "registered"
	DeviceActive         DeviceState = "active"
	DeviceSuspended      DeviceState = "suspended"
	DeviceDecommissioned DeviceState = "decommissioned"
)

// Valid reports whether s is a known state.
func (s DeviceState) Valid() bool {
	switch s {
	case DeviceRegistered, DeviceActive, DeviceSuspended, DeviceDecommissioned:
		return true
	}
	return false
}

// CanTransition reports whether a device may go from s to next.
func (s DeviceState) CanTransition(next DeviceState) bool {
	switch s {
	case DeviceRegistered:
		return next == DeviceActive || next == DeviceDecommissioned
	case DeviceActive:
		return next == DeviceSuspended || next == DeviceDecommissioned
	case DeviceSuspended:
		return next == DeviceActive || next == DeviceDecommissioned
	}
	return false
}

// Device is a thing registered with the platform.
type Device struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Metadata  json.RawMessage   `json:"metadata,omitempty"`
	State     DeviceState       `json:"state"`
	Online    bool              `json:"online"`
	LastSeen  *time.Time        `json:"last_seen,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// Limits on device fields.
const (
	MaxDeviceNameLen   = 128
	MaxLabels          = 32
	MaxLabelKeyLen     = 63
	MaxLabelValueLen   = 255
	MaxMetadataBytes   = 16 << 10
	DefaultDeviceLimit = 100
	MaxDeviceLimit     = 1000
)

var labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?$`)

// ValidateDeviceName returns EINVALID unless name is 1 to MaxDeviceNameLen
// bytes of printable UTF-8 without leading or trailing space.
func ValidateDeviceName(name string) error {
	if name == "" {
		return Errorf(EINVALID, "name: required")
	} else if len(name) > MaxDeviceNameLen {
		return Errorf(EINVALID, "name: longer than %d bytes", MaxDeviceNameLen)
	} else if !utf8.ValidString(name) {
		return Errorf(EINVALID, "name: not valid UTF-8")
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return Errorf(EINVALID, "name: contains a control or non-printable character")
		}
	}
	if unicode.IsSpace(rune(name[0])) || unicode.IsSpace(rune(name[len(name)-1])) {
		return Errorf(EINVALID, "name: leading or trailing space")
	}
	return nil
}

// ValidateLabels returns EINVALID if labels has too many entries or a key
// or value out of form.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return Errorf(EINVALID, "labels: more than %d", MaxLabels)
	}
	for k, v := range labels {
		if len(k) > MaxLabelKeyLen || !labelKeyRE.MatchString(k) {
			return Errorf(EINVALID, "labels: invalid key %q (letters, digits, '_', '.', '-', '/', at most %d)", truncate(k, 70), MaxLabelKeyLen)
		}
		if len(v) > MaxLabelValueLen || !utf8.ValidString(v) {
			return Errorf(EINVALID, "labels: value of %q longer than %d bytes or not UTF-8", k, MaxLabelValueLen)
		}
		for _, r := range v {
			if !unicode.IsPrint(r) {
				return Errorf(EINVALID, "labels: value of %q contains a control character", k)
			}
		}
	}
	return nil
}

// ValidateMetadata returns EINVALID unless m is empty or a JSON object of at
// most MaxMetadataBytes.
func ValidateMetadata(m json.RawMessage) error {
	if len(m) == 0 {
		return nil
	} else if len(m) > MaxMetadataBytes {
		return Errorf(EINVALID, "metadata: larger than %d bytes", MaxMetadataBytes)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(m, &obj); err != nil || obj == nil {
		return Errorf(EINVALID, "metadata: must be a JSON object")
	}
	return nil
}

// Validate checks the fields a caller may set.
func (d *Device) Validate() error {
	if err := ValidateDeviceName(d.Name); err != nil {
		return err
	} else if err := ValidateLabels(d.Labels); err != nil {
		return err
	}
	return ValidateMetadata(d.Metadata)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// DeviceFilter selects devices. Zero fields do not filter.
type DeviceFilter struct {
	ID     *string
	Name   *string
	State  *DeviceState
	Labels map[string]string // all must match
	Query  string            // case-insensitive substring of the name
	Online *bool

	Cursor string // opaque, from a previous page; pages are in creation order
	Limit  int    // DefaultDeviceLimit if 0, at most MaxDeviceLimit
}

// DeviceUpdate is a partial update; nil fields are left alone.
type DeviceUpdate struct {
	Name     *string            `json:"name"`
	Labels   *map[string]string `json:"labels"`
	Metadata *json.RawMessage   `json:"metadata"`
}

// DeviceStats counts the fleet.
type DeviceStats struct {
	Total   int                 `json:"total"`
	Online  int                 `json:"online"`
	ByState map[DeviceState]int `json:"by_state"`
}

// ConnectionEvent is a device's MQTT session starting or ending.
type ConnectionEvent struct {
	DeviceID   string    `json:"device_id"`
	Online     bool      `json:"online"`
	At         time.Time `json:"at"`
	RemoteAddr string    `json:"remote_addr,omitempty"`
	Reason     string    `json:"reason,omitempty"` // why a session ended
}

// DeviceService stores the device registry. Mutations write an audit record
// in the same transaction, with the principal in ctx as actor.
type DeviceService interface {
	// FindDeviceByID returns ENOTFOUND if there is no such device.
	FindDeviceByID(ctx context.Context, id string) (*Device, error)

	// FindDevices returns a page of devices and the cursor of the next page
	// ("" on the last page). Returns EINVALID for a bad cursor.
	FindDevices(ctx context.Context, filter DeviceFilter) (devices []*Device, next string, err error)

	// CreateDevice validates d, sets its ID, State (registered) and times,
	// and stores it. Returns EINVALID, ECONFLICT (name taken).
	CreateDevice(ctx context.Context, d *Device) error

	// UpdateDevice applies upd. Returns ENOTFOUND, EINVALID, ECONFLICT.
	UpdateDevice(ctx context.Context, id string, upd DeviceUpdate) (*Device, error)

	// DeleteDevice removes the device and its tokens. Its certificates
	// are revoked and kept, so that they stay on the CRL until they
	// expire. Returns ENOTFOUND.
	DeleteDevice(ctx context.Context, id string) error

	// TransitionDevice moves the device to state next. Decommissioning
	// revokes all of its certificates. Returns ENOTFOUND, and ECONFLICT if
	// the current state does not allow it (see DeviceState.CanTransition).
	TransitionDevice(ctx context.Context, id string, next DeviceState) (*Device, error)

	// RecordConnection updates the device's online flag and last-seen time
	// and appends ev to its connection history. Returns ENOTFOUND.
	RecordConnection(ctx context.Context, ev ConnectionEvent) error

	// FindConnections returns the device's newest connection events first.
	FindConnections(ctx context.Context, deviceID string, limit int) ([]*ConnectionEvent, error)

	// ResetConnections marks every device offline, with a final event, for a
	// broker that starts with no sessions. It returns how many were online.
	ResetConnections(ctx context.Context, at time.Time) (int, error)

	// DeviceStats counts devices by state and online flag.
	DeviceStats(ctx context.Context) (DeviceStats, error)
}
