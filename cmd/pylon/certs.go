package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
)

const certVerbs = "list, get, revoke"

// runCerts implements `pylon certs VERB`.
func (e *cliEnv) runCerts(ctx context.Context, args []string) error {
	v, args, err := verb(args, certVerbs)
	if err != nil {
		return err
	}
	fs := e.flags("certs " + v)
	switch v {
	case "list", "ls":
		device := fs.String("device", "", "only this device's (`id or name`)")
		status := fs.String("status", "", "only this `status`: valid, superseded, revoked")
		limit := fs.Int("limit", 100, "at most `n`")
		if _, err := parse(fs, args); err != nil {
			return err
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		f := pylon.CertificateFilter{Limit: *limit}
		if *device != "" {
			d, err := resolveDevice(ctx, c, *device)
			if err != nil {
				return err
			}
			f.DeviceID = &d.ID
		}
		if *status != "" {
			s := pylon.CertStatus(*status)
			f.Status = &s
		}
		certs, err := c.ListCertificates(ctx, f)
		if err != nil {
			return err
		}
		now := time.Now()
		return e.print(map[string]any{"certificates": certs}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "SERIAL\tDEVICE\tSTATUS\tKEY\tNOT AFTER")
			for _, c := range certs {
				st := string(c.Status)
				if c.Status == pylon.CertValid && !now.Before(c.NotAfter) {
					st = "expired"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Serial, c.DeviceID, st, c.KeyType, fmtTime(&c.NotAfter))
			}
		})
	case "get":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("certs get SERIAL")
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		cert, err := c.GetCertificate(ctx, normalizeSerial(pos[0]))
		if err != nil {
			return err
		}
		return e.print(cert, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "Serial\t%s\nDevice\t%s\nStatus\t%s\nKey\t%s\nNot before\t%s\nNot after\t%s\nRevoked\t%s %s\n",
				cert.Serial, cert.DeviceID, cert.Status, cert.KeyType, fmtTime(&cert.NotBefore), fmtTime(&cert.NotAfter), fmtTime(cert.RevokedAt), cert.Reason)
			if len(cert.DER) > 0 {
				w.Flush()
				pem.Encode(e.stdout, &pem.Block{Type: "CERTIFICATE", Bytes: cert.DER})
			}
		})
	case "revoke":
		reason := fs.String("reason", "", "why (recorded in the audit log; key_compromise marks it in the CRL)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("certs revoke SERIAL [--reason R]")
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		cert, err := c.RevokeCertificate(ctx, normalizeSerial(pos[0]), *reason)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "revoked certificate %s of device %s\n", cert.Serial, cert.DeviceID)
		return nil
	}
	return usageErrorf("certs: unknown verb %q; want one of: %s", v, certVerbs)
}

// normalizeSerial accepts openssl's "serial=0A1B..." and colon forms.
func normalizeSerial(s string) string {
	s = strings.TrimPrefix(strings.TrimSpace(s), "serial=")
	s = strings.ToLower(strings.ReplaceAll(s, ":", ""))
	if t := strings.TrimLeft(s, "0"); t != "" {
		return t
	}
	return s
}
