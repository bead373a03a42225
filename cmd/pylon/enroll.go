package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon/sdk/device"
)

const enrollUsage = `usage: pylon enroll [--server URL] [--ca FILE] --enroll-token T [--key p256|ed25519] [--name CN] DIR

Enrolls a device, as the device: makes its key pair in DIR (the private key
never leaves it), sends a certificate request to the server's EST
simpleenroll with the enrollment token, and stores what the device needs in
DIR (created 0700): device.key (0600), device.crt, ca.crt, server.url and
device.id. It is what examples/shell/enroll.sh does with openssl and curl,
and what the Go SDK's device.Enroll does; a shell device then signs its
telemetry with "pylon seal --key DIR/device.key --seq-file DIR/seq".

With a fleet token, --name becomes the new device's name (a serial number,
say); with a device token it is ignored. The token may also come from
$PYLON_ENROLL_TOKEN, the server and CA from $PYLON_SERVER and $PYLON_CA;
next to a local server they default to https://localhost:8443 and
./pylon-data/ca.crt.

`

// runEnroll implements `pylon enroll`.
func (e *cliEnv) runEnroll(ctx context.Context, args []string) error {
	fs := e.flagSet("enroll", enrollUsage)
	ef := addEnrollFlags(fs, "CA certificate `file` to trust", "enrollment `token`")
	keyType := fs.String("key", "p256", "key the device makes: p256 or ed25519")
	name := fs.String("name", "", "`common name` of the request: the new device's name with a fleet token")
	output := fs.String("o", "table", "output `format`: table or json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	ef.resolve(e)
	switch {
	case len(pos) != 1:
		return usageErrorf("enroll: want one directory, got %d arguments", len(pos))
	case *ef.token == "":
		return usageErrorf("enroll: --enroll-token (or $PYLON_ENROLL_TOKEN) is required")
	case *keyType != string(device.KeyP256) && *keyType != string(device.KeyEd25519):
		return usageErrorf("enroll: --key must be p256 or ed25519")
	case *output != "table" && *output != "json":
		return usageErrorf("enroll: -o must be table or json")
	}
	caPEM, err := os.ReadFile(*ef.ca)
	if err != nil {
		return fmt.Errorf("read CA certificate: %w", err)
	}
	opts := []device.EnrollOption{device.WithKeyType(device.KeyType(*keyType))}
	if *name != "" {
		opts = append(opts, device.WithCommonName(*name))
	}
	id, err := device.Enroll(ctx, *ef.server, *ef.token, caPEM, pos[0], opts...)
	if err != nil {
		return err
	}
	e.output = *output
	return e.print(enrolled{DeviceID: id.DeviceID, Dir: id.Dir, NotAfter: id.Certificate.NotAfter.UTC()}, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "enrolled device %s in %s; certificate valid until %s\n", id.DeviceID, id.Dir, fmtTime(&id.Certificate.NotAfter))
	})
}

// enrolled is what `pylon enroll -o json` prints.
type enrolled struct {
	DeviceID string    `json:"device_id"`
	Dir      string    `json:"dir"`
	NotAfter time.Time `json:"not_after"`
}
