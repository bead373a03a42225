package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

const tokenVerbs = "create, list, revoke"

// runTokens implements `pylon tokens VERB` (enrollment tokens).
func (e *cliEnv) runTokens(ctx context.Context, args []string) error {
	v, args, err := verb(args, tokenVerbs)
	if err != nil {
		return err
	}
	fs := e.flags("tokens " + v)
	switch v {
	case "create":
		labels := labelsFlag{}
		device := fs.String("device", "", "enroll this registered device (`id or name`)")
		uses := fs.Int("uses", 0, "fleet token: how many devices it may enroll (default 1)")
		ttl := fs.String("ttl", "", "how long the token lives, e.g. 1h or 7d (default 24h)")
		fs.Var(labels, "label", "fleet token: `key=value` label for the devices it creates (repeatable)")
		if _, err := parse(fs, args); err != nil {
			return err
		}
		if isSet(fs, "uses") && *uses < 1 {
			return usageErrorf("--uses must be at least 1")
		}
		req := httpapi.EnrollmentTokenRequest{Labels: labels, Uses: *uses}
		if *ttl != "" {
			d, err := ParseDuration(*ttl)
			if err != nil {
				return usageErrorf("--ttl: %v", err)
			}
			req.TTL = d.String()
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		if *device != "" {
			if len(labels) > 0 || *uses > 1 {
				return usageErrorf("--device enrolls one device: no --label or --uses")
			}
			d, err := resolveDevice(ctx, c, *device)
			if err != nil {
				return err
			}
			req.DeviceID = d.ID
		}
		t, err := c.CreateEnrollmentToken(ctx, req)
		if err != nil {
			return err
		}
		return e.print(t, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "Token\t%s\n", t.Token)
			fmt.Fprintf(w, "ID\t%s\n", t.ID)
			fmt.Fprintf(w, "Expires\t%s\n", fmtTime(&t.ExpiresAt))
			fmt.Fprintf(w, "\nThe token is shown only now. A device enrolls with it over EST, e.g.\n")
			if e.caRead != "" { // the CA file this command trusted
				ca := e.caRead
				if abs, err := filepath.Abs(ca); err == nil {
					ca = abs
				}
				fmt.Fprintf(w, "  examples/shell/enroll.sh %s %s %s DIR\n", c.BaseURL, shellQuote(ca), t.Token)
			} else {
				fmt.Fprintf(w, "  examples/shell/enroll.sh %s ca.crt %s DIR\n", c.BaseURL, t.Token)
				fmt.Fprintf(w, "with the platform's CA certificate in ca.crt (docs/protocol.md, section 1).\n")
			}
		})

	case "list", "ls":
		live := fs.Bool("live", false, "only tokens that can still be used")
		if _, err := parse(fs, args); err != nil {
			return err
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		toks, err := c.ListEnrollmentTokens(ctx, *live)
		if err != nil {
			return err
		}
		now := time.Now()
		return e.print(map[string]any{"enrollment_tokens": toks}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "ID\tFOR\tUSED\tEXPIRES\tSTATUS")
			for _, t := range toks {
				status := "live"
				switch {
				case t.RevokedAt != nil:
					status = "revoked"
				case !now.Before(t.ExpiresAt):
					status = "expired"
				case t.Used >= t.Uses:
					status = "used up"
				}
				fmt.Fprintf(w, "%s\t%s\t%d/%d\t%s\t%s\n", t.ID, tokenTarget(t), t.Used, t.Uses, fmtTime(&t.ExpiresAt), status)
			}
		})

	case "revoke":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("tokens revoke ID")
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		if err := c.RevokeEnrollmentToken(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "revoked enrollment token %s\n", pos[0])
		return nil
	}
	return usageErrorf("tokens: unknown verb %q; want one of: %s", v, tokenVerbs)
}

func tokenTarget(t *pylon.EnrollmentToken) string {
	if t.DeviceID != "" {
		return "device " + t.DeviceID
	}
	return strings.TrimSpace("fleet " + formatLabels(t.Labels))
}

// shellQuote quotes s for a POSIX shell, unless it needs none.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-+:@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
