package httpapi_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

func TestCreateAPIToken(t *testing.T) {
	tests := []struct {
		name        string
		body        string
		wantRole    pylon.Role
		wantExpires *time.Time
	}{
		{"viewer by default", `{"name":"ci"}`, pylon.RoleViewer, nil},
		{"operator with ttl", `{"name":"ci","role":"operator","ttl":"720h"}`, pylon.RoleOperator, ptr(t0.Add(720 * time.Hour))},
		{"admin", `{"name":"root","role":"admin"}`, pylon.RoleAdmin, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var (
				stored *pylon.APIToken
				hash   []byte
			)
			f.apiToks.CreateAPITokenFn = func(ctx context.Context, tok *pylon.APIToken, h []byte) error {
				stored, hash = tok, h
				return nil
			}
			var created httpapi.APITokenCreated
			decode(t, f.serve("POST", "/api/v1/api-tokens", tt.body, f.as(pylon.RoleAdmin)), 201, &created)
			id, h, err := pylon.ParseSecret(pylon.APITokenPrefix, created.Token)
			if err != nil {
				t.Fatalf("token %q: %v", created.Token, err)
			}
			if id != stored.ID || id != created.ID || !bytes.Equal(h, hash) {
				t.Errorf("secret id %q, stored %q, response %q; want one id and its hash stored", id, stored.ID, created.ID)
			}
			if stored.Role != tt.wantRole || created.Role != tt.wantRole {
				t.Errorf("got role %q, want %q", stored.Role, tt.wantRole)
			}
			if (stored.ExpiresAt == nil) != (tt.wantExpires == nil) || stored.ExpiresAt != nil && !stored.ExpiresAt.Equal(*tt.wantExpires) {
				t.Errorf("got expires %v, want %v", stored.ExpiresAt, tt.wantExpires)
			}
			if strings.Contains(f.logBuf.String(), created.Token) {
				t.Error("the secret was logged")
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestCreateAPIToken_Invalid(t *testing.T) {
	tests := []struct {
		name, body string
		svcErr     error
		wantStatus int
		wantCode   string
	}{
		{"no name", `{}`, nil, 422, pylon.EINVALID},
		{"long name", `{"name":"` + strings.Repeat("n", 65) + `"}`, nil, 422, pylon.EINVALID},
		{"bad role", `{"name":"x","role":"root"}`, nil, 422, pylon.EINVALID},
		{"bad ttl", `{"name":"x","ttl":"forever"}`, nil, 422, pylon.EINVALID},
		{"unknown field", `{"name":"x","secret":"mine"}`, nil, 422, pylon.EINVALID},
		{"store refuses", `{"name":"x"}`, pylon.Errorf(pylon.ECONFLICT, "name taken"), 409, pylon.ECONFLICT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.apiToks.CreateAPITokenFn = func(context.Context, *pylon.APIToken, []byte) error { return tt.svcErr }
			checkError(t, f.serve("POST", "/api/v1/api-tokens", tt.body, f.as(pylon.RoleAdmin)), tt.wantStatus, tt.wantCode)
		})
	}
}

func TestAPITokens_ListRevoke(t *testing.T) {
	f := newFixture(t)
	var list httpapi.APITokenList
	decode(t, f.serve("GET", "/api/v1/api-tokens", "", f.as(pylon.RoleAdmin)), 200, &list)
	if len(list.APITokens) != 1 || list.APITokens[0].ID != tokID {
		t.Errorf("got %+v", list.APITokens)
	}
	var revoked string
	f.apiToks.RevokeAPITokenFn = func(ctx context.Context, id string) error {
		revoked = id
		return nil
	}
	if w := f.serve("DELETE", "/api/v1/api-tokens/"+tokID, "", f.as(pylon.RoleAdmin)); w.Code != 204 || revoked != tokID {
		t.Errorf("got %d, revoked %q; want 204, %q", w.Code, revoked, tokID)
	}
}
