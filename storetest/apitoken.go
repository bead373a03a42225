package storetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

func testAPITokenCreate(t *testing.T, s Stores) {
	ctx := adminCtx()
	secret, id, hash := pylon.NewSecret(pylon.APITokenPrefix)
	exp := T0.Add(30 * 24 * time.Hour)
	tok := &pylon.APIToken{ID: id, Name: "ci", Role: pylon.RoleOperator, ExpiresAt: &exp}
	if err := s.APITokens.CreateAPIToken(ctx, tok, hash); err != nil {
		t.Fatalf("create: %v", err)
	}
	if !tok.CreatedAt.Equal(T0) || tok.LastUsedAt != nil || tok.RevokedAt != nil {
		t.Fatalf("got created_at %v last_used %v revoked %v, want %v, nil, nil", tok.CreatedAt, tok.LastUsedAt, tok.RevokedAt, T0)
	}
	err := s.APITokens.CreateAPIToken(ctx, &pylon.APIToken{ID: id, Name: "again", Role: pylon.RoleViewer}, hash)
	wantCode(t, err, pylon.ECONFLICT)

	_, id2, hash2 := pylon.NewSecret(pylon.APITokenPrefix)
	tests := []struct {
		name string
		tok  pylon.APIToken
		hash []byte
	}{
		{"bad id", pylon.APIToken{ID: "NOT-AN-ID", Name: "x", Role: pylon.RoleAdmin}, hash2},
		{"empty name", pylon.APIToken{ID: id2, Role: pylon.RoleAdmin}, hash2},
		{"long name", pylon.APIToken{ID: id2, Name: strings.Repeat("n", 65), Role: pylon.RoleAdmin}, hash2},
		{"control in name", pylon.APIToken{ID: id2, Name: "a\tb", Role: pylon.RoleAdmin}, hash2},
		{"no role", pylon.APIToken{ID: id2, Name: "x"}, hash2},
		{"bad role", pylon.APIToken{ID: id2, Name: "x", Role: "root"}, hash2},
		{"short hash", pylon.APIToken{ID: id2, Name: "x", Role: pylon.RoleAdmin}, hash2[:16]},
		{"no hash", pylon.APIToken{ID: id2, Name: "x", Role: pylon.RoleAdmin}, nil},
		{"expired", pylon.APIToken{ID: id2, Name: "x", Role: pylon.RoleAdmin, ExpiresAt: timePtr(T0.Add(-time.Second))}, hash2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := tt.tok
			wantCode(t, s.APITokens.CreateAPIToken(ctx, &tok, tt.hash), pylon.EINVALID)
		})
	}
	// A name of exactly 64 bytes is fine, and names need not be unique.
	if err := s.APITokens.CreateAPIToken(ctx, &pylon.APIToken{ID: id2, Name: strings.Repeat("n", 64), Role: pylon.RoleViewer}, hash2); err != nil {
		t.Fatalf("create with 64-byte name: %v", err)
	}
	_, id3, hash3 := pylon.NewSecret(pylon.APITokenPrefix)
	if err := s.APITokens.CreateAPIToken(ctx, &pylon.APIToken{ID: id3, Name: "ci", Role: pylon.RoleAdmin}, hash3); err != nil {
		t.Fatalf("create with a name in use: %v", err)
	}

	all, err := s.APITokens.FindAPITokens(ctx)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if len(all) != 3 || all[0].ID != id3 || all[1].ID != id2 || all[2].ID != id {
		t.Fatalf("got %d tokens, want 3 newest first", len(all))
	}
	if got := all[2]; got.Name != "ci" || got.Role != pylon.RoleOperator || got.ExpiresAt == nil || !got.ExpiresAt.Equal(exp) || !got.CreatedAt.Equal(T0) {
		t.Fatalf("got %+v, want what was stored", *got)
	}

	if err := s.APITokens.RevokeAPIToken(ctx, id); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if err := s.APITokens.RevokeAPIToken(ctx, id); err != nil {
		t.Fatalf("revoke again: %v", err)
	}
	wantCode(t, s.APITokens.RevokeAPIToken(ctx, "nosuchtoken23456"), pylon.ENOTFOUND)
	if n, err := s.APITokens.CountAPITokens(ctx); err != nil || n != 3 {
		t.Fatalf("got count %d (err %v), want 3 (revoked included)", n, err)
	}
	all, err = s.APITokens.FindAPITokens(ctx)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if all[2].RevokedAt == nil || !all[2].RevokedAt.Equal(T0) {
		t.Fatalf("got revoked_at %v, want %v", all[2].RevokedAt, T0)
	}

	wantAudit(t, s, "api_token:"+id, adminPrincipal.Actor(), pylon.ActionAPITokenCreate, pylon.ActionAPITokenRevoke)
	wantNoSecret(t, s, []byte(secret), hash, hash2, hash3)
}

func testAPITokenAuthenticate(t *testing.T, s Stores) {
	ctx := context.Background()
	create := func(name string, exp *time.Time) (id string, hash []byte) {
		t.Helper()
		_, id, hash = pylon.NewSecret(pylon.APITokenPrefix)
		if err := s.APITokens.CreateAPIToken(adminCtx(), &pylon.APIToken{ID: id, Name: name, Role: pylon.RoleAdmin, ExpiresAt: exp}, hash); err != nil {
			t.Fatalf("create: %v", err)
		}
		return id, hash
	}
	good, goodHash := create("good", nil)
	revoked, revokedHash := create("revoked", nil)
	expiring, expiringHash := create("expiring", timePtr(T0.Add(time.Hour)))
	if err := s.APITokens.RevokeAPIToken(adminCtx(), revoked); err != nil {
		t.Fatalf("revoke: %v", err)
	}

	s.SetNow(T0.Add(time.Minute))
	tok, err := s.APITokens.AuthenticateAPIToken(ctx, good, goodHash)
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	if tok.ID != good || tok.Role != pylon.RoleAdmin || tok.Name != "good" {
		t.Fatalf("got %+v, want the good token", *tok)
	}
	if tok.LastUsedAt == nil || !tok.LastUsedAt.Equal(T0.Add(time.Minute)) {
		t.Fatalf("got last_used_at %v, want %v", tok.LastUsedAt, T0.Add(time.Minute))
	}
	all, err := s.APITokens.FindAPITokens(ctx)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	for _, a := range all {
		if a.ID == good && (a.LastUsedAt == nil || !a.LastUsedAt.Equal(T0.Add(time.Minute))) {
			t.Fatalf("stored last_used_at %v, want %v", a.LastUsedAt, T0.Add(time.Minute))
		}
	}
	if _, err := s.APITokens.AuthenticateAPIToken(ctx, expiring, expiringHash); err != nil {
		t.Fatalf("authenticate before expiry: %v", err)
	}

	wrong := pylon.HashSecret("pyl_at_wrong")
	tests := []struct {
		name string
		now  time.Time
		id   string
		hash []byte
	}{
		{"wrong secret", T0, good, wrong},
		{"other token's secret", T0, good, revokedHash},
		{"truncated hash", T0, good, goodHash[:31]},
		{"no hash", T0, good, nil},
		{"unknown id", T0, "nosuchtoken23456", goodHash},
		{"malformed id", T0, "x' OR '1'='1", goodHash},
		{"revoked", T0, revoked, revokedHash},
		{"expired", T0.Add(time.Hour), expiring, expiringHash},
		{"long expired", T0.Add(48 * time.Hour), expiring, expiringHash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetNow(tt.now)
			_, err := s.APITokens.AuthenticateAPIToken(ctx, tt.id, tt.hash)
			wantError(t, err, pylon.EUNAUTHORIZED, "invalid credentials")
		})
	}
}
