package pylon

import "context"

// PrincipalKind says what kind of caller a Principal is.
type PrincipalKind string

// Principal kinds.
const (
	PrincipalAPIToken PrincipalKind = "token"  // an administrator's API token
	PrincipalUser     PrincipalKind = "user"   // a dashboard session
	PrincipalDevice   PrincipalKind = "device" // a device, by its certificate
	// PrincipalEnrollToken is a device enrolling with an enrollment token,
	// before it has an identity of its own.
	PrincipalEnrollToken PrincipalKind = "enrollment_token"
	PrincipalSystem      PrincipalKind = "system" // the platform itself
)

// Principal is the authenticated caller of an operation. It travels in the
// context and becomes the actor of the audit records the operation writes.
type Principal struct {
	Kind PrincipalKind
	ID   string // API token id, user name or device id; empty for system
	Role Role   // for API tokens and users
}

// Actor returns the principal as an audit actor, e.g. "token:k3x9..." or
// "system".
func (p Principal) Actor() string {
	if p.Kind == "" || p.Kind == PrincipalSystem {
		return string(PrincipalSystem)
	}
	return string(p.Kind) + ":" + p.ID
}

// SystemPrincipal is the actor of what the platform does by itself.
var SystemPrincipal = Principal{Kind: PrincipalSystem}

type contextKey int

const principalContextKey contextKey = iota

// NewContextWithPrincipal returns a copy of ctx that carries p.
func NewContextWithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalContextKey, p)
}

// PrincipalFromContext returns the principal carried by ctx, or
// SystemPrincipal if there is none.
func PrincipalFromContext(ctx context.Context) Principal {
	if p, ok := ctx.Value(principalContextKey).(Principal); ok {
		return p
	}
	return SystemPrincipal
}
