package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"unicode"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ingest"
)

// Refusal reasons: the values of the reason label of
// pylon_mqtt_connect_refused_total. The set is fixed, so the label stays
// bounded.
const (
	reasonTLS           = "tls"                // handshake failed: no or foreign certificate
	reasonNoCertificate = "no_certificate"     // no verified certificate on the TLS listener
	reasonBadIdentity   = "invalid_identity"   // certificate CN is not a device id
	reasonClientID      = "client_id_mismatch" // client id is not the certificate's device id
	reasonBadClientID   = "client_id_invalid"  // integration listener: empty, too long or device-like client id
	reasonWill          = "will_denied"        // will topic outside what the client may publish
	reasonUnauthorized  = "unauthorized"       // store: EUNAUTHORIZED (unknown/superseded/expired certificate)
	reasonForbidden     = "forbidden"          // store: EFORBIDDEN (revoked, device not active), or role
	reasonBadToken      = "bad_token"          // integration listener: missing, malformed or unknown API token
	reasonStoreError    = "store_error"        // the store failed; refused, fail closed
	reasonListener      = "unknown_listener"   // cannot happen; fail closed
)

// connackCode is a refusal as MQTT 5 and MQTT 3.1.1 spell it.
type connackCode struct {
	v5     byte
	v3     byte
	reason string
}

// CONNACK refusals [MQTT-3.2.2-6] [MQTT-3.2.2-8]. mochi itself would answer
// a failed OnConnectAuthenticate with 0x86 "bad user name or password",
// which is wrong for a certificate, hence these are written by the hook.
var (
	connackNotAuthorized  = connackCode{v5: 0x87, v3: 0x05, reason: "not authorized"}
	connackBadCredentials = connackCode{v5: 0x86, v3: 0x04, reason: "bad user name or password"}
	connackUnavailable    = connackCode{v5: 0x88, v3: 0x03, reason: "server unavailable"}
	connackBadClientID    = connackCode{v5: 0x85, v3: 0x02, reason: "client identifier not valid"}
)

// authHook authenticates every CONNECT. Devices (TLS listener) by their
// verified client certificate and the store; integrations (integration listeners)
// by an API token.
//
// The work is done in OnConnect, which can write its own CONNACK and halt
// the connection. mochi calls OnConnectAuthenticate only after every
// OnConnect hook returned nil; no other hook may provide it (mochi admits a
// client if any hook says yes).
type authHook struct {
	mqtt.HookBase
	b *Broker
}

// ID implements mqtt.Hook.
func (h *authHook) ID() string { return "pylon-auth" }

// Provides implements mqtt.Hook.
func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnConnectAuthenticate
}

// OnConnect authenticates the client, or refuses it with a CONNACK of its
// own and returns an error, which ends the connection.
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	switch cl.Net.Listener {
	case listenerTLS:
		return h.b.authenticateDevice(cl, pk)
	case listenerIntegration, listenerPlain:
		return h.b.authenticateIntegration(cl, pk)
	}
	return h.b.refuse(cl, "", reasonListener, "", connackNotAuthorized)
}

// OnConnectAuthenticate re-checks the cheap identity invariants as a
// second line; OnConnect has already done the real work.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	switch cl.Net.Listener {
	case listenerTLS:
		id, _, ok := peerIdentity(cl)
		return ok && pylon.ValidID(id) && cl.ID == id
	case listenerIntegration, listenerPlain:
		return integrationClientIDOK(cl.ID) && pk.Connect.PasswordFlag
	}
	return false
}

// authenticateDevice admits a device whose verified certificate names it,
// whose client id is its device id, and which the store lets connect now.
func (b *Broker) authenticateDevice(cl *mqtt.Client, pk packets.Packet) error {
	id, serial, ok := peerIdentity(cl)
	if !ok {
		return b.refuse(cl, "", reasonNoCertificate, "", connackNotAuthorized)
	} else if !pylon.ValidID(id) {
		return b.refuse(cl, "", reasonBadIdentity, "certificate common name is not a device id", connackNotAuthorized)
	}
	// The certificate is the identity: the client id must be the device id,
	// a further CONNECT check as [MQTT-3.1.4-2] allows; user name and
	// password are ignored.
	if pk.Connect.ClientIdentifier != id {
		return b.refuse(cl, id, reasonClientID, "client id is not the certificate's device id", connackNotAuthorized)
	}
	// A will is published on the device's behalf: the same ACL applies.
	// mochi publishes wills without OnPublish, so a will on the telemetry
	// topic would reach subscribers unverified: refused too.
	if pk.Connect.WillFlag && !b.willAllowed(id, pk.Connect.WillTopic) {
		return b.refuse(cl, id, reasonWill, "will topic outside what the device may publish", connackNotAuthorized)
	}

	s := b.sessions.get(id)
	seq := s.authStart()
	ctx, cancel := b.storeContext(devicePrincipal(id))
	defer cancel()
	_, err := b.opts.Certs.AuthorizeConnection(ctx, id, serial, b.now())
	switch pylon.ErrorCode(err) {
	case "":
	case pylon.EUNAUTHORIZED:
		return b.refuse(cl, id, reasonUnauthorized, pylon.ErrorMessage(err), connackNotAuthorized)
	case pylon.EFORBIDDEN:
		return b.refuse(cl, id, reasonForbidden, pylon.ErrorMessage(err), connackNotAuthorized)
	default:
		b.log.Error("authorize mqtt connection", "device", id, "err", err)
		return b.refuse(cl, id, reasonStoreError, "", connackUnavailable)
	}
	limitKeepalive(cl)
	// Telemetry must be signed with the key of the certificate the device
	// connected with: keep it, ready to verify, for the telemetry hook.
	if cert := peerCertificate(cl); cert != nil {
		b.conns.set(cl.Net.Conn, ingest.NewKey(cert.PublicKey))
	}
	s.authorized(cl, seq)
	return nil
}

// willAllowed reports whether device id may leave a will on topic.
func (b *Broker) willAllowed(id, topic string) bool {
	if b.opts.Ingest != nil && topic == TelemetryTopic(id) {
		return false
	}
	return devicePublishAllowed(id, topic)
}

// authenticateIntegration admits a platform integration on an
// integration listener (TLS or plain) that presents a live API token as
// its password; recheckIntegrations checks the token again later.
func (b *Broker) authenticateIntegration(cl *mqtt.Client, pk packets.Packet) error {
	// Device-like ids, and the inline client's, would take over a device's
	// (or the platform's) session.
	if !integrationClientIDOK(cl.ID) {
		return b.refuse(cl, "", reasonBadClientID, "", connackBadClientID)
	} else if pk.Connect.WillFlag {
		return b.refuse(cl, "", reasonWill, "integrations may not publish", connackNotAuthorized)
	} else if !pk.Connect.PasswordFlag || len(pk.Connect.Password) > maxPasswordLen {
		return b.refuse(cl, "", reasonBadToken, "", connackBadCredentials)
	}
	tokenID, hash, err := pylon.ParseSecret(pylon.APITokenPrefix, string(pk.Connect.Password))
	if err != nil {
		return b.refuse(cl, "", reasonBadToken, "", connackBadCredentials)
	}
	ctx, cancel := b.storeContext(pylon.SystemPrincipal)
	defer cancel()
	tok, err := b.opts.APITokens.AuthenticateAPIToken(ctx, tokenID, hash)
	switch {
	case pylon.ErrorCode(err) == pylon.EUNAUTHORIZED:
		return b.refuse(cl, "", reasonBadToken, "", connackBadCredentials)
	case err != nil:
		b.log.Error("authenticate mqtt integration", "token", tokenID, "err", err)
		return b.refuse(cl, "", reasonStoreError, "", connackUnavailable)
	case !tok.Role.Allows(pylon.PermRead):
		return b.refuse(cl, "", reasonForbidden, "token role may not read", connackNotAuthorized)
	}
	limitKeepalive(cl)
	b.integrations.add(cl, integrationToken{id: tokenID, hash: hash})
	b.log.Info("mqtt integration connected", "token", tok.ID, "client", cl.ID, "remote", cl.Net.Remote)
	return nil
}

// refuse logs, counts and audits a refused CONNECT, answers it with code
// and returns the error that makes mochi drop the connection. deviceID is
// "" unless a verified certificate named the device; detail is user-safe.
func (b *Broker) refuse(cl *mqtt.Client, deviceID, reason, detail string, code connackCode) error {
	b.log.Warn("mqtt connection refused", "device", deviceID, "reason", reason, "detail", detail,
		"client", truncate(cl.ID, maxClientIDLen), "listener", cl.Net.Listener, "remote", cl.Net.Remote)
	b.metrics.refused.WithLabelValues(reason).Inc()
	object, actor := "mqtt:"+cl.Net.Listener, pylon.SystemPrincipal
	if deviceID != "" {
		object, actor = "device:"+deviceID, devicePrincipal(deviceID)
	}
	b.audit.add(pylon.ActionMQTTRefused, object, actor, reason, cl.Net.Remote)

	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = code.v5
		ack.Properties.ReasonString = code.reason
	} else {
		ack.ReasonCode = code.v3 // MQTT 3.1.1 return codes, 3.2.2.3
	}
	_ = cl.WritePacket(ack) // the connection is closed either way
	return fmt.Errorf("connection refused: %s", reason)
}

// peerIdentity returns the device id (subject CN) and the serial (lower-case
// hex) of the client's verified certificate.
func peerIdentity(cl *mqtt.Client) (id, serial string, ok bool) {
	cert := peerCertificate(cl)
	if cert == nil {
		return "", "", false
	}
	return cert.Subject.CommonName, fmt.Sprintf("%x", cert.SerialNumber), true
}

// peerCertificate returns the client's verified leaf certificate, or nil.
func peerCertificate(cl *mqtt.Client) *x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	st := tc.ConnectionState()
	if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}

// integrationClientIDOK reports whether id may be used by an integration:
// 1 to maxClientIDLen printable bytes, neither a device id nor the inline
// client's.
func integrationClientIDOK(id string) bool {
	if id == "" || len(id) > maxClientIDLen || !utf8.ValidString(id) ||
		pylon.ValidID(id) || id == mqtt.InlineClientId {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// limitKeepalive bounds how long an idle connection lives: a keepalive of
// 0 (none) or above maxKeepalive becomes maxKeepalive, announced to MQTT 5
// clients as Server Keep Alive [MQTT-3.2.2-21].
func limitKeepalive(cl *mqtt.Client) {
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKeepalive {
		cl.State.Keepalive = maxKeepalive
		cl.State.ServerKeepalive = true
	}
}
