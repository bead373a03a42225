package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/pylonhq/pylon"
	"github.com/veraison/go-cose"
)

// Content types: CoAP content-format numbers of SenML (RFC 8428 §12.3).
const (
	ContentTypeSenMLJSON = 110 // application/senml+json
	ContentTypeSenMLCBOR = 112 // application/senml+cbor, the default
)

// Content encodings of the payload.
const (
	EncodingNone    = ""        // not compressed
	EncodingDeflate = "deflate" // raw deflate, RFC 1951
	EncodingZstd    = "zstd"    // Zstandard frames, RFC 8878
)

// Private-use header labels of the protected header.
const (
	HeaderSeq      = -65537 // uint: the device's message sequence number
	HeaderEncoding = -65538 // tstr: content encoding of the payload
)

// Errors. Each error that Open and Seal return because of their input wraps
// exactly one of them, carries the detail in its message, and is also a
// *pylon.Error (see the codes below) so that the message can be shown to
// the device's owner.
var (
	// ErrBadSignature means the message is not authentic: the signature does
	// not verify, it was made with another key, or the algorithm in the
	// header is not the one of the device's key. MQTT reason code 0x87 (Not
	// authorized). Code pylon.EUNAUTHORIZED.
	ErrBadSignature = errors.New("envelope: bad signature")

	// ErrMalformed means the message is not a COSE_Sign1 as this protocol
	// defines it: bad CBOR, missing or bad headers, a non-empty unprotected
	// header, an unknown critical header, an unknown content encoding, a
	// corrupt compressed payload or trailing bytes. MQTT reason code 0x99
	// (Payload format invalid). Code pylon.EBADREQUEST.
	ErrMalformed = errors.New("envelope: malformed message")

	// ErrTooLarge means the message is over pylon.MaxMessageBytes or its
	// payload decompresses to more than pylon.MaxDecodedBytes (or, in Seal,
	// the pack is over pylon.MaxDecodedBytes). MQTT reason code 0x95 (Packet
	// too large) or 0x99. Code pylon.ETOOLARGE.
	ErrTooLarge = errors.New("envelope: message too large")
)

// Message is an opened telemetry message.
type Message struct {
	Seq         uint64 // sequence number, ≥ 1
	ContentType int    // ContentTypeSenMLCBOR or ContentTypeSenMLJSON
	Encoding    string // the content encoding it travelled in: "", "deflate" or "zstd"
	Payload     []byte // the SenML pack, decompressed; never aliases the input
}

// SealOptions says how Seal encodes a message. The zero value seals an
// uncompressed SenML CBOR pack as an untagged COSE_Sign1.
type SealOptions struct {
	// ContentType is ContentTypeSenMLCBOR (the default, also for 0) or
	// ContentTypeSenMLJSON.
	ContentType int
	// Encoding is EncodingNone, EncodingDeflate or EncodingZstd.
	Encoding string
	// Level is the compression level: 0 for the encoding's default, 1–9 for
	// deflate, 1–22 for zstd (zstd levels map onto the four speeds of
	// github.com/klauspost/compress/zstd). Ignored without an encoding.
	Level int
	// Tagged adds the COSE_Sign1 tag (18) in front, one more byte.
	Tagged bool
}

// AlgorithmFor returns the COSE algorithm that a device key must sign with:
// ES256 for ECDSA P-256, ES384 for ECDSA P-384 and EdDSA for Ed25519. The
// algorithm is always derived from the key, never from a message. Other
// keys return an error wrapping ErrBadSignature.
func AlgorithmFor(pub crypto.PublicKey) (cose.Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return cose.AlgorithmES256, nil
		case elliptic.P384():
			return cose.AlgorithmES384, nil
		}
		return 0, badSignature("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return 0, badSignature("bad Ed25519 public key")
		}
		return cose.AlgorithmEdDSA, nil
	case *rsa.PublicKey:
		// Enrollment accepts RSA keys (docs/protocol.md, section 2).
		return 0, badSignature("unsupported key type: an RSA key cannot sign telemetry; the device needs an ECDSA P-256 or P-384, or an Ed25519 key")
	}
	return 0, badSignature("unsupported key type %T", pub)
}

// Seal compresses the SenML pack senml if opts asks for it and signs it
// with signer, a crypto.Signer holding an ECDSA P-256 or P-384 key or an
// Ed25519 key (the key of the device's certificate). seq must be ≥ 1 and
// greater than that of every message the device sent before (see the
// package documentation). It returns the COSE_Sign1 to publish.
func Seal(signer crypto.Signer, seq uint64, senml []byte, opts SealOptions) ([]byte, error) {
	ct := opts.ContentType
	if ct == 0 {
		ct = ContentTypeSenMLCBOR
	}
	switch {
	case ct != ContentTypeSenMLCBOR && ct != ContentTypeSenMLJSON:
		return nil, fmt.Errorf("envelope: unsupported content type %d", opts.ContentType)
	case seq == 0:
		return nil, errors.New("envelope: sequence number must be at least 1")
	case len(senml) > pylon.MaxDecodedBytes:
		return nil, tooLarge("pack of %d bytes is over the limit of %d", len(senml), pylon.MaxDecodedBytes)
	}
	alg, err := AlgorithmFor(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("envelope: signer: %w", err)
	}
	payload, err := compress(opts.Encoding, opts.Level, senml)
	if err != nil {
		return nil, err
	}
	var hdr [32]byte
	protected := appendProtected(hdr[:0], alg, seq, ct, opts.Encoding)

	s, err := cose.NewSigner(alg, signer)
	if err != nil {
		return nil, fmt.Errorf("envelope: signer: %w", err)
	}
	tbs := appendSigStructure(make([]byte, 0, sigStructureLen(protected, payload)), protected, payload)
	sig, err := s.Sign(rand.Reader, tbs)
	if err != nil {
		return nil, fmt.Errorf("envelope: sign: %w", err)
	}
	msg := appendSign1(make([]byte, 0, sign1Len(protected, payload, sig)+1), opts.Tagged, protected, payload, sig)
	if len(msg) > pylon.MaxMessageBytes {
		return nil, tooLarge("sealed message of %d bytes is over the limit of %d", len(msg), pylon.MaxMessageBytes)
	}
	return msg, nil
}

// Open verifies msg with pub, the public key of the device's certificate,
// and returns its decompressed content. The algorithm is derived from pub
// (see AlgorithmFor); a message whose alg header differs fails with
// ErrBadSignature. The payload is decompressed only after the signature
// has verified, and never beyond pylon.MaxDecodedBytes.
//
// Open does not check the sequence number against earlier messages: that is
// the caller's job, as it needs the device's stored high-water mark.
//
// Open checks the signature with go-cose's verifiers (the standard
// library's crypto); Opener can use others.
func Open(msg []byte, pub crypto.PublicKey) (*Message, error) {
	return Opener{}.Open(msg, pub)
}

// An Opener opens messages as Open does, with the signature verifiers of
// its choice.
type Opener struct {
	// NewVerifier returns the verifier of signatures made with alg by the
	// key of pub. Open calls it with the algorithm derived from pub, never
	// one read from the message, and refuses the message if the verifier
	// returned is for another algorithm. Nil means go-cose's
	// cose.NewVerifier.
	NewVerifier func(alg cose.Algorithm, pub crypto.PublicKey) (cose.Verifier, error)
}

// A Key is a device's public key made ready to open its messages: the
// algorithm derived from it and its verifier, made once by Opener.NewKey,
// for instance for all the messages of a connection. A key that cannot check messages
// holds why, and every message opened with it is refused with that.
type Key struct {
	pub crypto.PublicKey
	alg cose.Algorithm
	v   cose.Verifier
	err error
}

// NewKey returns pub ready for Key.Open, with the verifier o makes for
// the algorithm derived from pub.
func (o Opener) NewKey(pub crypto.PublicKey) *Key {
	alg, err := AlgorithmFor(pub)
	if err != nil {
		return &Key{pub: pub, err: err}
	}
	newVerifier := o.NewVerifier
	if newVerifier == nil {
		newVerifier = cose.NewVerifier
	}
	v, err := newVerifier(alg, pub)
	if err != nil || v == nil || v.Algorithm() != alg {
		return &Key{pub: pub, err: badSignature("unusable device key")}
	}
	return &Key{pub: pub, alg: alg, v: v}
}

// Public returns the public key k was made of.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Open verifies msg with pub and returns its decompressed content; see the
// function Open.
func (o Opener) Open(msg []byte, pub crypto.PublicKey) (*Message, error) {
	return o.NewKey(pub).Open(msg)
}

// Open verifies msg with k and returns its decompressed content; see the
// function Open.
func (k *Key) Open(msg []byte) (*Message, error) {
	s, err := k.Parse(msg)
	if err != nil {
		return nil, err
	}
	if err := s.Verify(); err != nil {
		return nil, err
	}
	return s.OpenVerified()
}

// Signed is a message parsed with its device's key, its signature not
// checked yet: Key.Open in two steps, so that the caller can check the
// signatures of many messages together (ed25519voi.Batch). Its content
// is only to be read once the signature is checked.
type Signed struct {
	// Verifier is the device key's (Key), and ToBeSigned the COSE
	// Sig_structure that Signature must sign.
	Verifier   cose.Verifier
	ToBeSigned []byte
	Signature  []byte

	hdr     header
	payload []byte
}

// Parse checks msg's size, structure, protected header and algorithm
// against k, and returns it ready to have its signature checked. Its
// errors are those of Open.
func (k *Key) Parse(msg []byte) (*Signed, error) {
	if len(msg) > pylon.MaxMessageBytes {
		return nil, tooLarge("message of %d bytes is over the limit of %d", len(msg), pylon.MaxMessageBytes)
	}
	protected, payload, sig, err := parseSign1(msg)
	if err != nil {
		return nil, err
	}
	hdr, err := parseProtected(protected)
	if err != nil {
		return nil, err
	}
	if k.err != nil {
		return nil, k.err
	}
	if hdr.alg != k.alg {
		return nil, badSignature("algorithm mismatch: the header says %s, the device key needs %s", hdr.alg, k.alg)
	}
	return &Signed{Verifier: k.v, ToBeSigned: appendSigStructure(nil, protected, payload), Signature: sig, hdr: hdr, payload: payload}, nil
}

// Seq returns the sequence number of the protected header. It is the
// device's only once the signature is checked.
func (s *Signed) Seq() uint64 { return s.hdr.seq }

// Verify checks the signature with s.Verifier; its error is Open's for a
// bad signature.
func (s *Signed) Verify() error {
	if err := s.Verifier.Verify(s.ToBeSigned, s.Signature); err != nil {
		return ErrSignatureMismatch
	}
	return nil
}

// ErrSignatureMismatch is the error of a signature that does not verify;
// it wraps ErrBadSignature.
var ErrSignatureMismatch = badSignature("signature does not verify")

// OpenVerified returns the decompressed content of a message whose
// signature the caller has checked (Verify, or a batch check of
// ToBeSigned and Signature with Verifier's key).
func (s *Signed) OpenVerified() (*Message, error) {
	content, err := decompress(s.hdr.encoding, s.payload)
	if err != nil {
		return nil, err
	}
	return &Message{Seq: s.hdr.seq, ContentType: s.hdr.contentType, Encoding: s.hdr.encoding, Payload: content}, nil
}

// codedError is an error caused by the input: it wraps one of the
// sentinels and a *pylon.Error with a user-safe message.
type codedError struct {
	sentinel error
	perr     *pylon.Error
}

func (e *codedError) Error() string   { return e.perr.Message }
func (e *codedError) Unwrap() []error { return []error{e.sentinel, e.perr} }

func newError(sentinel error, code, format string, args ...any) error {
	return &codedError{sentinel, pylon.Errorf(code, sentinel.Error()+": "+format, args...)}
}

func badSignature(format string, args ...any) error {
	return newError(ErrBadSignature, pylon.EUNAUTHORIZED, format, args...)
}

func malformed(format string, args ...any) error {
	return newError(ErrMalformed, pylon.EBADREQUEST, format, args...)
}

func tooLarge(format string, args ...any) error {
	return newError(ErrTooLarge, pylon.ETOOLARGE, format, args...)
}
