package sqlite

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// Limits of the connection history.
const (
	maxConnectionHistory = 100 // events kept per device
	maxConnTextLen       = 256 // remote address and reason, truncated beyond
	maxCursorLen         = 64
)

// ReasonBrokerRestart is the reason of the events ResetConnections writes.
const ReasonBrokerRestart = "broker restart"

// DeviceService stores the device registry.
type DeviceService struct {
	db *DB
}

var _ pylon.DeviceService = (*DeviceService)(nil)

// NewDeviceService returns a DeviceService on db.
func NewDeviceService(db *DB) *DeviceService {
	return &DeviceService{db: db}
}

const deviceColumns = `seq, id, name, labels, metadata, state, online, last_seen, created_at, updated_at`

type rowScanner interface {
	Scan(dest ...any) error
}

// scanDevice scans one row of deviceColumns.
func scanDevice(row rowScanner) (*pylon.Device, int64, error) {
	var (
		d        pylon.Device
		seq      int64
		labels   string
		metadata sql.NullString
		state    string
	)
	if err := row.Scan(&seq, &d.ID, &d.Name, &labels, &metadata, &state, &d.Online,
		nullTimeScanner{&d.LastSeen}, timeScanner{&d.CreatedAt}, timeScanner{&d.UpdatedAt}); err != nil {
		return nil, 0, err
	}
	d.State = pylon.DeviceState(state)
	var err error
	if d.Labels, err = decodeLabels(labels); err != nil {
		return nil, 0, err
	}
	if metadata.Valid && metadata.String != "" {
		d.Metadata = json.RawMessage(metadata.String)
	}
	return &d, seq, nil
}

// findDevice returns the device with the given id and its seq.
func findDevice(ctx context.Context, q queryer, id string) (*pylon.Device, int64, error) {
	if len(id) > 2*pylon.IDLen {
		return nil, 0, errNoSuchDevice()
	}
	d, seq, err := scanDevice(q.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, errNoSuchDevice()
	} else if err != nil {
		return nil, 0, fmt.Errorf("find device: %w", err)
	}
	return d, seq, nil
}

// FindDeviceByID returns the device. Returns ENOTFOUND.
func (s *DeviceService) FindDeviceByID(ctx context.Context, id string) (*pylon.Device, error) {
	d, _, err := findDevice(ctx, s.db.reader, id)
	return d, err
}

// encodeCursor returns the opaque cursor after the device with seq.
func encodeCursor(seq int64) string {
	var b [9]byte
	b[0] = 'd'
	binary.BigEndian.PutUint64(b[1:], uint64(seq))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// decodeCursor returns the seq encoded by encodeCursor. Returns EINVALID.
func decodeCursor(cursor string) (int64, error) {
	bad := pylon.Errorf(pylon.EINVALID, "cursor: invalid")
	if len(cursor) > maxCursorLen {
		return 0, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil || len(b) != 9 || b[0] != 'd' {
		return 0, bad
	}
	seq := int64(binary.BigEndian.Uint64(b[1:]))
	if seq <= 0 {
		return 0, bad
	}
	return seq, nil
}

// escapeLike escapes the LIKE wildcards of s, for ESCAPE '\'.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// FindDevices returns a page of matching devices in creation order and the
// cursor of the next page ("" on the last). Returns EINVALID for a bad
// cursor or an oversized filter.
func (s *DeviceService) FindDevices(ctx context.Context, f pylon.DeviceFilter) ([]*pylon.Device, string, error) {
	var (
		where []string
		args  []any
	)
	if f.Cursor != "" {
		seq, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		where, args = append(where, "seq > ?"), append(args, seq)
	}
	if f.ID != nil {
		where, args = append(where, "id = ?"), append(args, *f.ID)
	}
	if f.Name != nil {
		where, args = append(where, "name = ?"), append(args, *f.Name)
	}
	if f.State != nil {
		if !f.State.Valid() {
			return nil, "", pylon.Errorf(pylon.EINVALID, "state: unknown state %q", truncate(string(*f.State), 32))
		}
		where, args = append(where, "state = ?"), append(args, string(*f.State))
	}
	if f.Online != nil {
		where, args = append(where, "online = ?"), append(args, *f.Online)
	}
	if len(f.Labels) > pylon.MaxLabels {
		return nil, "", pylon.Errorf(pylon.EINVALID, "labels: more than %d", pylon.MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(f.Labels)) {
		if len(k) > pylon.MaxLabelKeyLen || len(f.Labels[k]) > pylon.MaxLabelValueLen {
			return nil, "", pylon.Errorf(pylon.EINVALID, "labels: key or value too long")
		}
		where = append(where, "seq IN (SELECT device_seq FROM device_labels WHERE key = ? AND value = ?)")
		args = append(args, k, f.Labels[k])
	}
	if f.Query != "" {
		if len(f.Query) > pylon.MaxDeviceNameLen {
			return nil, "", pylon.Errorf(pylon.EINVALID, "query: longer than %d bytes", pylon.MaxDeviceNameLen)
		}
		where, args = append(where, `name LIKE ? ESCAPE '\'`), append(args, "%"+escapeLike(f.Query)+"%")
	}
	limit := clampLimit(f.Limit, pylon.DefaultDeviceLimit, pylon.MaxDeviceLimit)

	q := `SELECT ` + deviceColumns + ` FROM devices`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY seq LIMIT ?`
	args = append(args, limit+1)

	rows, err := s.db.reader.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("query devices: %w", err)
	}
	defer rows.Close()
	devices := make([]*pylon.Device, 0, min(limit, 64))
	var last int64
	next := ""
	for rows.Next() {
		if len(devices) == limit {
			next = encodeCursor(last)
			break
		}
		d, seq, err := scanDevice(rows)
		if err != nil {
			return nil, "", fmt.Errorf("scan device: %w", err)
		}
		devices, last = append(devices, d), seq
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("query devices: %w", err)
	}
	return devices, next, nil
}

// nameTaken reports whether another device than id has the name.
func nameTaken(ctx context.Context, tx *Tx, name, id string) (bool, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE name = ? AND id != ?`, name, id).Scan(&n); err != nil {
		return false, fmt.Errorf("check device name: %w", err)
	}
	return n > 0, nil
}

// setLabels replaces the rows of device_labels for the device with seq.
func setLabels(ctx context.Context, tx *Tx, seq int64, labels map[string]string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM device_labels WHERE device_seq = ?`, seq); err != nil {
		return fmt.Errorf("clear labels: %w", err)
	}
	for k, v := range labels {
		if _, err := tx.ExecContext(ctx, `INSERT INTO device_labels (device_seq, key, value) VALUES (?, ?, ?)`, seq, k, v); err != nil {
			return fmt.Errorf("insert label: %w", err)
		}
	}
	return nil
}

// createDevice validates d, fills in its ID, state and times and inserts it
// with its audit record. d is changed only on success.
func createDevice(ctx context.Context, tx *Tx, d *pylon.Device) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if taken, err := nameTaken(ctx, tx, d.Name, ""); err != nil {
		return err
	} else if taken {
		return pylon.Errorf(pylon.ECONFLICT, "device name already exists")
	}
	nd := *d
	nd.ID = pylon.NewID()
	nd.Labels = copyLabels(d.Labels)
	nd.State = pylon.DeviceRegistered
	nd.Online = false
	nd.LastSeen = nil
	nd.CreatedAt, nd.UpdatedAt = tx.now, tx.now
	if len(d.Metadata) > 0 {
		nd.Metadata = slices.Clone(d.Metadata)
	} else {
		nd.Metadata = nil
	}

	labels, err := encodeLabels(nd.Labels)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `
		INSERT INTO devices (id, name, labels, metadata, state, online, last_seen, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, 0, NULL, ?, ?)`,
		nd.ID, nd.Name, labels, nullString(nd.Metadata), string(nd.State), timeArg(nd.CreatedAt), timeArg(nd.UpdatedAt))
	if isUniqueViolation(err) {
		return pylon.Errorf(pylon.ECONFLICT, "device name already exists")
	} else if err != nil {
		return fmt.Errorf("insert device: %w", err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return fmt.Errorf("insert device: %w", err)
	}
	if err := setLabels(ctx, tx, seq, nd.Labels); err != nil {
		return err
	}
	if err := tx.audit(ctx, pylon.ActionDeviceCreate, "device:"+nd.ID, details{"name": nd.Name, "labels": nd.Labels}); err != nil {
		return err
	}
	*d = nd
	return nil
}

// nullString returns b as a string argument, NULL when empty.
func nullString(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// CreateDevice validates d, sets its ID, state (registered) and times, and
// stores it. Returns EINVALID, ECONFLICT (name taken).
func (s *DeviceService) CreateDevice(ctx context.Context, d *pylon.Device) error {
	if d == nil {
		return pylon.Errorf(pylon.EINVALID, "device required")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	nd := *d
	if err := createDevice(ctx, tx, &nd); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit device: %w", err)
	}
	*d = nd
	return nil
}

// UpdateDevice applies upd and returns the device. An update that changes
// nothing writes nothing. Returns ENOTFOUND, EINVALID, ECONFLICT.
func (s *DeviceService) UpdateDevice(ctx context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()

	d, seq, err := findDevice(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	var (
		changed []string
		det     = details{}
	)
	if upd.Name != nil && *upd.Name != d.Name {
		det["name"] = map[string]string{"from": d.Name, "to": *upd.Name}
		d.Name = *upd.Name
		changed = append(changed, "name")
	}
	if upd.Labels != nil && !maps.Equal(*upd.Labels, d.Labels) {
		d.Labels = copyLabels(*upd.Labels)
		changed = append(changed, "labels")
	}
	if upd.Metadata != nil && string(*upd.Metadata) != string(d.Metadata) {
		d.Metadata = nil
		if len(*upd.Metadata) > 0 {
			d.Metadata = slices.Clone(*upd.Metadata)
		}
		changed = append(changed, "metadata")
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if len(changed) == 0 {
		return d, nil
	}
	if slices.Contains(changed, "name") {
		if taken, err := nameTaken(ctx, tx, d.Name, d.ID); err != nil {
			return nil, err
		} else if taken {
			return nil, pylon.Errorf(pylon.ECONFLICT, "device name already exists")
		}
	}
	labels, err := encodeLabels(d.Labels)
	if err != nil {
		return nil, err
	}
	d.UpdatedAt = tx.now
	_, err = tx.ExecContext(ctx, `UPDATE devices SET name = ?, labels = ?, metadata = ?, updated_at = ? WHERE seq = ?`,
		d.Name, labels, nullString(d.Metadata), timeArg(d.UpdatedAt), seq)
	if isUniqueViolation(err) {
		return nil, pylon.Errorf(pylon.ECONFLICT, "device name already exists")
	} else if err != nil {
		return nil, fmt.Errorf("update device: %w", err)
	}
	if slices.Contains(changed, "labels") {
		if err := setLabels(ctx, tx, seq, d.Labels); err != nil {
			return nil, err
		}
	}
	det["changed"] = changed
	if err := tx.audit(ctx, pylon.ActionDeviceUpdate, "device:"+d.ID, det); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit device update: %w", err)
	}
	return d, nil
}

// DeleteDevice removes the device with its labels, enrollment tokens and
// connection history. Its certificates are revoked ("device deleted") and
// kept, so that they stay on the CRL until they expire. Returns ENOTFOUND.
func (s *DeviceService) DeleteDevice(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()

	d, seq, err := findDevice(ctx, tx, id)
	if err != nil {
		return err
	}
	if err := revokeDeviceCertificates(ctx, tx, d.ID, revokeReasonDeleted); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE seq = ?`, seq); err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	if err := tx.audit(ctx, pylon.ActionDeviceDelete, "device:"+d.ID, details{"name": d.Name, "state": d.State}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit device delete: %w", err)
	}
	return nil
}

// transitionAction returns the audit action of a state change.
func transitionAction(from, to pylon.DeviceState) string {
	switch {
	case to == pylon.DeviceDecommissioned:
		return pylon.ActionDeviceDecommission
	case to == pylon.DeviceSuspended:
		return pylon.ActionDeviceSuspend
	case to == pylon.DeviceActive && from == pylon.DeviceSuspended:
		return pylon.ActionDeviceResume
	default:
		return pylon.ActionDeviceActivate
	}
}

// transition moves d to next in tx with its audit record; decommissioning
// also revokes the device's certificates. d is updated.
func transition(ctx context.Context, tx *Tx, d *pylon.Device, next pylon.DeviceState) error {
	if !d.State.CanTransition(next) {
		return pylon.Errorf(pylon.ECONFLICT, "cannot go from %s to %s", d.State, next)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = ?, updated_at = ? WHERE id = ?`,
		string(next), timeArg(tx.now), d.ID); err != nil {
		return fmt.Errorf("update device state: %w", err)
	}
	from := d.State
	d.State, d.UpdatedAt = next, tx.now
	if err := tx.audit(ctx, transitionAction(from, next), "device:"+d.ID, details{"from": from, "to": next}); err != nil {
		return err
	}
	if next == pylon.DeviceDecommissioned {
		if err := revokeDeviceCertificates(ctx, tx, d.ID, reasonDecommissioned); err != nil {
			return err
		}
	}
	return nil
}

// TransitionDevice moves the device to state next. Returns EINVALID for an
// unknown state, ENOTFOUND, and ECONFLICT if the transition is not allowed.
func (s *DeviceService) TransitionDevice(ctx context.Context, id string, next pylon.DeviceState) (*pylon.Device, error) {
	if !next.Valid() {
		return nil, pylon.Errorf(pylon.EINVALID, "state: unknown state %q", truncate(string(next), 32))
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()

	d, _, err := findDevice(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if err := transition(ctx, tx, d, next); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit device transition: %w", err)
	}
	return d, nil
}

// truncate returns s cut to at most n bytes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// insertConnection appends a connection event and prunes the device's
// history to its newest maxConnectionHistory events.
func insertConnection(ctx context.Context, tx *Tx, ev pylon.ConnectionEvent) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO connections (device_id, online, at, remote_addr, reason) VALUES (?, ?, ?, ?, ?)`,
		ev.DeviceID, ev.Online, timeArg(ev.At), truncate(ev.RemoteAddr, maxConnTextLen), truncate(ev.Reason, maxConnTextLen)); err != nil {
		return fmt.Errorf("insert connection event: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `
		DELETE FROM connections WHERE device_id = ?1 AND seq <= (
			SELECT seq FROM connections WHERE device_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2
		)`, ev.DeviceID, maxConnectionHistory); err != nil {
		return fmt.Errorf("prune connection events: %w", err)
	}
	return nil
}

// RecordConnection updates the device's online flag and last-seen time
// (ev.At, or now if zero) and appends ev to its history, which keeps the
// newest 100 events. Connection events are not audited. Returns ENOTFOUND.
func (s *DeviceService) RecordConnection(ctx context.Context, ev pylon.ConnectionEvent) error {
	if ev.DeviceID == "" || len(ev.DeviceID) > 2*pylon.IDLen {
		return errNoSuchDevice()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if ev.At.IsZero() {
		ev.At = tx.now
	}
	res, err := tx.ExecContext(ctx, `UPDATE devices SET online = ?, last_seen = ? WHERE id = ?`, ev.Online, timeArg(ev.At), ev.DeviceID)
	if err != nil {
		return fmt.Errorf("update device connection: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update device connection: %w", err)
	} else if n == 0 {
		return errNoSuchDevice()
	}
	if err := insertConnection(ctx, tx, ev); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit connection: %w", err)
	}
	return nil
}

// FindConnections returns the device's newest connection events first, at
// most limit (default and maximum 100). Returns ENOTFOUND.
func (s *DeviceService) FindConnections(ctx context.Context, deviceID string, limit int) ([]*pylon.ConnectionEvent, error) {
	limit = clampLimit(limit, maxConnectionHistory, maxConnectionHistory)
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if _, _, err := findDevice(ctx, tx, deviceID); err != nil {
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, `SELECT device_id, online, at, remote_addr, reason FROM connections WHERE device_id = ? ORDER BY seq DESC LIMIT ?`, deviceID, limit)
	if err != nil {
		return nil, fmt.Errorf("query connections: %w", err)
	}
	defer rows.Close()
	events := []*pylon.ConnectionEvent{}
	for rows.Next() {
		var ev pylon.ConnectionEvent
		if err := rows.Scan(&ev.DeviceID, &ev.Online, timeScanner{&ev.At}, &ev.RemoteAddr, &ev.Reason); err != nil {
			return nil, fmt.Errorf("scan connection: %w", err)
		}
		events = append(events, &ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query connections: %w", err)
	}
	return events, nil
}

// ResetConnections marks every online device offline with an event at at
// (now if zero) and reason "broker restart", and returns how many there
// were. Their last-seen time is left alone: the broker did not see them
// at at.
func (s *DeviceService) ResetConnections(ctx context.Context, at time.Time) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	if at.IsZero() {
		at = tx.now
	}
	rows, err := tx.QueryContext(ctx, `SELECT id FROM devices WHERE online = 1 ORDER BY seq`)
	if err != nil {
		return 0, fmt.Errorf("query online devices: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("scan online device: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("query online devices: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET online = 0 WHERE online = 1`); err != nil {
		return 0, fmt.Errorf("reset online devices: %w", err)
	}
	for _, id := range ids {
		if err := insertConnection(ctx, tx, pylon.ConnectionEvent{DeviceID: id, Online: false, At: at, Reason: ReasonBrokerRestart}); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit connection reset: %w", err)
	}
	s.db.logger.Info("reset device connections", "devices", len(ids))
	return len(ids), nil
}

// DeviceStats counts devices by state and online flag. ByState has an
// entry for every state.
func (s *DeviceService) DeviceStats(ctx context.Context) (pylon.DeviceStats, error) {
	st := pylon.DeviceStats{ByState: map[pylon.DeviceState]int{
		pylon.DeviceRegistered: 0, pylon.DeviceActive: 0, pylon.DeviceSuspended: 0, pylon.DeviceDecommissioned: 0,
	}}
	rows, err := s.db.reader.QueryContext(ctx, `SELECT state, COUNT(*), COALESCE(SUM(online), 0) FROM devices GROUP BY state`)
	if err != nil {
		return st, fmt.Errorf("count devices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			state         string
			total, online int
		)
		if err := rows.Scan(&state, &total, &online); err != nil {
			return st, fmt.Errorf("count devices: %w", err)
		}
		st.ByState[pylon.DeviceState(state)] = total
		st.Total += total
		st.Online += online
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("count devices: %w", err)
	}
	return st, nil
}
