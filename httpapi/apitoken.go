package httpapi

import (
	"net/http"
	"time"

	"github.com/pylonhq/pylon"
)

// Limits on API tokens.
const (
	MaxAPITokenNameLen = 64
	MaxAPITokenTTL     = 10 * 365 * 24 * time.Hour
)

// APITokenRequest is the body of POST /api/v1/api-tokens.
type APITokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role,omitempty"` // admin, operator or viewer; viewer if ""
	TTL  string `json:"ttl,omitempty"`  // Go duration, e.g. "720h"; no expiry if ""
}

// APITokenCreated is the body of a 201 answer to POST /api/v1/api-tokens.
// Token is the secret: it is shown here and never again.
type APITokenCreated struct {
	Token string `json:"token"`
	*pylon.APIToken
}

// APITokenList is the body of GET /api/v1/api-tokens.
type APITokenList struct {
	APITokens []*pylon.APIToken `json:"api_tokens"`
}

func (s *Server) handleCreateAPIToken(w http.ResponseWriter, r *http.Request) {
	var req APITokenRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		Error(w, r, err)
		return
	}
	if err := validateName("name", req.Name, MaxAPITokenNameLen); err != nil {
		Error(w, r, err)
		return
	}
	role := pylon.Role(req.Role)
	if role == "" {
		role = pylon.RoleViewer // least privilege by default
	} else if !role.Valid() {
		Error(w, r, pylon.Errorf(pylon.EINVALID, "role: must be admin, operator or viewer"))
		return
	}
	now := s.now()
	t := &pylon.APIToken{Name: req.Name, Role: role, CreatedAt: now}
	if req.TTL != "" {
		ttl, err := parseTTL(req.TTL, 0, MaxAPITokenTTL)
		if err != nil {
			Error(w, r, err)
			return
		}
		exp := now.Add(ttl)
		t.ExpiresAt = &exp
	}
	secret, id, hash := pylon.NewSecret(pylon.APITokenPrefix)
	t.ID = id
	if err := s.APITokens.CreateAPIToken(r.Context(), t, hash); err != nil {
		Error(w, r, err)
		return
	}
	s.log.Info("created api token", "token_id", t.ID, "role", t.Role,
		"by", pylon.PrincipalFromContext(r.Context()).Actor())
	w.Header().Set("Location", "/api/v1/api-tokens/"+t.ID)
	writeJSON(w, http.StatusCreated, APITokenCreated{Token: secret, APIToken: t})
}

func (s *Server) handleListAPITokens(w http.ResponseWriter, r *http.Request) {
	tokens, err := s.APITokens.FindAPITokens(r.Context())
	if err != nil {
		Error(w, r, err)
		return
	}
	if tokens == nil {
		tokens = []*pylon.APIToken{}
	}
	writeJSON(w, http.StatusOK, APITokenList{APITokens: tokens})
}

func (s *Server) handleRevokeAPIToken(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "API token")
	if err != nil {
		Error(w, r, err)
		return
	}
	if err := s.APITokens.RevokeAPIToken(r.Context(), id); err != nil {
		Error(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
