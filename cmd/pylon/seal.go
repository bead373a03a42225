package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
)

// Limits of `pylon seal`'s inputs.
const (
	maxKeyFileBytes = 64 << 10
	maxSeqFileBytes = 64
)

const sealUsage = `usage: pylon seal --key FILE (--seq N | --seq-file FILE) [--format cbor|json] [--compress deflate|zstd] <pack.json >msg.cose

Reads a SenML JSON pack (at most 1 MiB) on stdin, checks it as the platform
would, and writes the telemetry message to publish on devices/ID/telemetry
(a COSE_Sign1 signed with the device key) to stdout:

  pylon seal --key dev/device.key --seq-file dev/seq < r.json |
    mosquitto_pub --cafile dev/ca.crt --cert dev/device.crt --key dev/device.key \
      -h HOST -p 8883 -i ID -q 1 -t devices/ID/telemetry -s

Flags:
`

// runSeal implements `pylon seal`: the device side of the telemetry
// protocol, for shell scripts. It needs no server.
func (e *cliEnv) runSeal(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("pylon seal", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), sealUsage)
		fs.PrintDefaults()
	}
	var (
		keyFile  = fs.String("key", "", "device private key `file` (PEM: PKCS#8 ECDSA P-256/P-384 or Ed25519, or SEC 1 \"EC PRIVATE KEY\")")
		seqFlag  = fs.String("seq", "", "sequence `number` of this message (≥ 1, higher than any sent before)")
		seqFile  = fs.String("seq-file", "", "`file` holding the last sequence number: seal uses the next one and saves it (0600) before writing the message")
		format   = fs.String("format", "cbor", "`encoding` of the pack in the message: cbor or json")
		compress = fs.String("compress", "", "compress the pack: deflate or zstd (default none)")
	)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) > 0:
		return usageErrorf("seal: unexpected argument %q (the pack is read from stdin)", pos[0])
	case *keyFile == "":
		return usageErrorf("seal: --key is required")
	case (*seqFlag == "") == (*seqFile == ""):
		return usageErrorf("seal: give exactly one of --seq and --seq-file")
	case *format != "cbor" && *format != "json":
		return usageErrorf("seal: --format: want cbor or json, got %q", *format)
	case *compress != envelope.EncodingNone && *compress != envelope.EncodingDeflate && *compress != envelope.EncodingZstd:
		return usageErrorf("seal: --compress: want deflate or zstd, got %q", *compress)
	}
	var seq uint64
	if *seqFlag != "" {
		if seq, err = strconv.ParseUint(*seqFlag, 10, 64); err != nil || seq == 0 {
			return usageErrorf("seal: --seq: want a whole number of at least 1, got %q", *seqFlag)
		}
	} else {
		last, err := readSeqFile(*seqFile)
		if err != nil {
			return err
		} else if last == math.MaxUint64 {
			return fmt.Errorf("seal: sequence file %s: the sequence is exhausted", *seqFile)
		}
		seq = last + 1
	}

	signer, err := loadSigner(*keyFile)
	if err != nil {
		return err
	}
	pack, err := readLimited(e.stdin, pylon.MaxDecodedBytes)
	if err != nil {
		return fmt.Errorf("seal: read pack from stdin: %w", err)
	}
	payload, ct, err := encodePack(pack, *format, time.Now())
	if err != nil {
		return err
	}
	msg, err := envelope.Seal(signer, seq, payload, envelope.SealOptions{ContentType: ct, Encoding: *compress})
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	// The number is saved before the message exists outside this process,
	// so that it is never used twice, even after a crash.
	if *seqFile != "" {
		if err := writeSeqFile(*seqFile, seq); err != nil {
			return err
		}
	}
	if _, err := e.stdout.Write(msg); err != nil {
		return fmt.Errorf("seal: write message: %w", err)
	}
	return nil
}

// encodePack checks the SenML JSON pack as the platform would at now and
// returns it in the given format with its content type.
func encodePack(pack []byte, format string, now time.Time) ([]byte, int, error) {
	readings, err := senml.Decode("", senml.ContentTypeJSON, pack, now, senml.Limits{})
	if err != nil {
		return nil, 0, err // a *pylon.Error: the message the platform would send
	}
	if format == "json" {
		var buf bytes.Buffer
		if err := json.Compact(&buf, pack); err != nil {
			return nil, 0, fmt.Errorf("seal: compact pack: %w", err)
		}
		return buf.Bytes(), envelope.ContentTypeSenMLJSON, nil
	}
	recs, err := senml.ParseJSON(pack)
	if err != nil {
		return nil, 0, err
	}
	cb, err := senml.EncodeCBOR(recs)
	if err != nil {
		return nil, 0, err
	}
	// Belt and braces: the CBOR pack must mean what the JSON pack means.
	again, err := senml.Decode("", senml.ContentTypeCBOR, cb, now, senml.Limits{})
	if err != nil || !reflect.DeepEqual(again, readings) {
		return nil, 0, errors.New("seal: the pack does not convert to CBOR without a change of meaning; use --format json")
	}
	return cb, envelope.ContentTypeSenMLCBOR, nil
}

// loadSigner reads a PEM private key usable for telemetry: ECDSA P-256 or
// P-384, or Ed25519, in PKCS#8 ("PRIVATE KEY", as openssl genpkey writes
// it) or SEC 1 ("EC PRIVATE KEY") form. Other PEM blocks (EC PARAMETERS,
// certificates) are skipped.
func loadSigner(name string) (crypto.Signer, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("seal: key: %w", err)
	}
	defer f.Close()
	b, err := readLimited(f, maxKeyFileBytes)
	if err != nil {
		return nil, fmt.Errorf("seal: key %s: %w", name, err)
	}
	for rest := b; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("seal: key %s is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)", name)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("seal: key %s: %w", name, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("seal: key %s: %T cannot sign", name, key)
		}
		if _, err := envelope.AlgorithmFor(signer.Public()); err != nil {
			kind := fmt.Sprintf("%T", signer.Public())
			if k, ok := signer.Public().(*ecdsa.PublicKey); ok {
				kind = "ECDSA " + k.Curve.Params().Name
			}
			return nil, fmt.Errorf("seal: key %s: a %s key cannot sign telemetry; want ECDSA P-256 or P-384, or Ed25519", name, kind)
		}
		return signer, nil
	}
	return nil, fmt.Errorf("seal: key %s: no PEM \"PRIVATE KEY\" or \"EC PRIVATE KEY\" block", name)
}

// readLimited reads all of r, refusing more than limit bytes.
func readLimited(r io.Reader, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	} else if len(b) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}

// readSeqFile returns the last sequence number saved in name, 0 if the
// file does not exist yet.
func readSeqFile(name string) (uint64, error) {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("seal: sequence file: %w", err)
	}
	defer f.Close()
	b, err := readLimited(f, maxSeqFileBytes)
	if err != nil {
		return 0, fmt.Errorf("seal: sequence file %s: %w", name, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("seal: sequence file %s: want a whole number, got %q", name, s)
	}
	return n, nil
}

// writeSeqFile saves seq in name (mode 0600) durably: the file is written
// and synced under a temporary name, renamed over name, and the directory
// is synced so that the rename survives a power cut. Concurrent seals with
// the same file are not supported.
func writeSeqFile(name string, seq uint64) error {
	if err := writeFileAtomic(name, []byte(strconv.FormatUint(seq, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("seal: save sequence number: %w", err)
	}
	dir, err := os.Open(filepath.Dir(name))
	if err != nil {
		return fmt.Errorf("seal: save sequence number: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("seal: save sequence number: sync directory: %w", err)
	}
	return nil
}
