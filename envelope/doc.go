// Package envelope seals and opens Pylon telemetry messages: SenML packs
// (see package senml), optionally compressed, signed by the device as a
// COSE_Sign1 (RFC 9052).
//
// # Wire format
//
// A device publishes each message to devices/{id}/telemetry at QoS 1. The
// MQTT payload is one COSE_Sign1, untagged or with tag 18 (Seal writes it
// untagged unless asked, which saves a byte; Open accepts both):
//
//	COSE_Sign1 = [
//	    protected:   bstr .cbor header_map,
//	    unprotected: {},            ; must be the empty map
//	    payload:     bstr,          ; attached; never nil
//	    signature:   bstr,
//	]
//
// The protected header map, written in deterministic encoding (RFC 8949
// §4.2.1; keys in the order 1, 3, -65537, -65538):
//
//	1 (alg)            -7 (ES256, ECDSA P-256 with SHA-256),
//	                   -35 (ES384, ECDSA P-384 with SHA-384) or
//	                   -8 (EdDSA, Ed25519); required
//	3 (content type)   112 (application/senml+cbor) or
//	                   110 (application/senml+json); absent means 112.
//	                   Open also accepts the two media type strings.
//	-65537 (seq)       uint ≥ 1, the device's message sequence number;
//	                   required
//	-65538 (encoding)  "deflate" (raw deflate, RFC 1951) or "zstd"
//	                   (Zstandard, RFC 8878, no checksum needed); absent
//	                   means not compressed
//
// The payload is the SenML pack, compressed if the encoding header says so.
// The signature covers the Sig_structure of RFC 9052 §4.4 with empty
// external AAD, over the exact protected and payload bytes sent:
//
//	["Signature1", protected, h'', payload]
//
// ECDSA signatures are the fixed-length r || s of RFC 9053 §2.1 (64 bytes
// for P-256, 96 for P-384), Ed25519 signatures 64 bytes.
//
// A single reading [{n:"temp",u:"Cel",v:22.5}] sealed with P-256 and seq
// 123456 takes 100 bytes: 1 array head, 14 protected header, 1 unprotected,
// 18 payload and 66 signature.
//
// # Receiving
//
// Open, in order:
//
//  1. refuses messages over pylon.MaxMessageBytes (ErrTooLarge);
//  2. parses the COSE_Sign1 strictly: definite lengths only, an empty
//     unprotected header, no trailing bytes (ErrMalformed);
//  3. decodes the protected header with bounded CBOR decoding (no duplicate
//     keys, no indefinite lengths, no tags) and checks alg, seq, content
//     type and encoding; unknown labels are ignored unless listed in crit
//     (2), and a crit entry other than 1, 3, -65537 or -65538 is refused
//     (ErrMalformed);
//  4. derives the algorithm from the device's public key, never from the
//     message, and refuses a message whose alg differs (ErrBadSignature);
//  5. verifies the signature (ErrBadSignature);
//  6. only then decompresses, refusing output over pylon.MaxDecodedBytes
//     as soon as it is exceeded (ErrTooLarge) and corrupt streams or bytes
//     after the end of a deflate stream (ErrMalformed).
//
// # Sequence numbers
//
// The sequence number protects against replay. It is per device, starts at
// 1 and strictly increases with every message; gaps are allowed. The device
// persists a high-water mark, so that a reboot continues the sequence
// rather than restarting it; persisting it ahead of use (reserving numbers
// in blocks, say) keeps a crash from ever reusing a number. The receiver
// stores each (device, sequence number) at most once and keeps the highest
// number it stored per device. It accepts a number not yet stored that is
// above that, or at most pylon.ReplayWindow below it (late or reordered
// redeliveries after a reconnect); it acknowledges a number already stored
// without storing it again (MQTT QoS 1 may deliver a message twice); and it
// refuses anything lower as a replay. Open does not do these checks, as
// they need the stored state; it only refuses 0, which receivers may use for
// "nothing received yet".
//
// The private-use labels -65537 and -65538 are not listed in crit, to save
// bytes: every Pylon receiver understands them.
//
// # Errors
//
// Errors caused by the input wrap exactly one of ErrBadSignature,
// ErrMalformed and ErrTooLarge and are also *pylon.Error values
// (EUNAUTHORIZED, EBADREQUEST, ETOOLARGE) with a user-safe message.
package envelope
