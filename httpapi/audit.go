package httpapi

import (
	"net/http"
	"strconv"

	"github.com/pylonhq/pylon"
)

// AuditList is the body of GET /api/v1/audit.
type AuditList struct {
	Records []*pylon.AuditRecord `json:"records"`
}

// auditFilter parses the query of GET /api/v1/audit: object, actor,
// action, since and until (RFC 3339), after (a Seq), limit and
// order=asc|desc.
func auditFilter(r *http.Request) (pylon.AuditFilter, error) {
	q := r.URL.Query()
	var (
		f   pylon.AuditFilter
		err error
	)
	if f.Object, err = queryString(q, "object", maxQueryValue); err != nil {
		return f, err
	}
	if f.Actor, err = queryString(q, "actor", maxQueryValue); err != nil {
		return f, err
	}
	if f.Action, err = queryString(q, "action", maxQueryValue); err != nil {
		return f, err
	}
	if f.Since, err = queryTime(q, "since"); err != nil {
		return f, err
	}
	if f.Until, err = queryTime(q, "until"); err != nil {
		return f, err
	}
	if v := q.Get("after"); v != "" {
		if f.After, err = strconv.ParseInt(v, 10, 64); err != nil || f.After < 0 {
			return f, pylon.Errorf(pylon.EINVALID, "after: must be a record number (0 or more)")
		}
	}
	if f.Limit, err = queryLimit(q, MaxListLimit); err != nil {
		return f, err
	}
	switch q.Get("order") {
	case "", "asc":
	case "desc":
		f.Desc = true
	default:
		return f, pylon.Errorf(pylon.EINVALID, "order: must be asc or desc")
	}
	return f, nil
}

func (s *Server) handleListAudit(w http.ResponseWriter, r *http.Request) {
	f, err := auditFilter(r)
	if err != nil {
		Error(w, r, err)
		return
	}
	records, err := s.Audit.FindAuditRecords(r.Context(), f)
	if err != nil {
		Error(w, r, err)
		return
	}
	if records == nil {
		records = []*pylon.AuditRecord{}
	}
	writeJSON(w, http.StatusOK, AuditList{Records: records})
}

func (s *Server) handleVerifyAudit(w http.ResponseWriter, r *http.Request) {
	v, err := s.Audit.VerifyAudit(r.Context())
	if err != nil {
		Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
