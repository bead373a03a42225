package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/pylonhq/pylon/httpapi"
)

const apiTokenVerbs = "create, list, revoke"

// runAPITokens implements `pylon api-tokens VERB`.
func (e *cliEnv) runAPITokens(ctx context.Context, args []string) error {
	v, args, err := verb(args, apiTokenVerbs)
	if err != nil {
		return err
	}
	fs := e.flags("api-tokens " + v)
	switch v {
	case "create":
		role := fs.String("role", "viewer", "`role`: admin, operator or viewer")
		ttl := fs.String("ttl", "", "lifetime, e.g. 90d (default: no expiry)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("api-tokens create NAME [--role R] [--ttl D]")
		}
		req := httpapi.APITokenRequest{Name: pos[0], Role: *role}
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
		t, err := c.CreateAPIToken(ctx, req)
		if err != nil {
			return err
		}
		return e.print(t, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "Token\t%s\n", t.Token)
			fmt.Fprintf(w, "ID\t%s\n", t.ID)
			fmt.Fprintf(w, "Role\t%s\n", t.Role)
			fmt.Fprintf(w, "\nThe token is shown only now.\n")
		})
	case "list", "ls":
		if _, err := parse(fs, args); err != nil {
			return err
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		toks, err := c.ListAPITokens(ctx)
		if err != nil {
			return err
		}
		return e.print(map[string]any{"api_tokens": toks}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "ID\tNAME\tROLE\tCREATED\tLAST USED\tEXPIRES\tREVOKED")
			for _, t := range toks {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, fmtTime(&t.CreatedAt), fmtTime(t.LastUsedAt), fmtTime(t.ExpiresAt), fmtTime(t.RevokedAt))
			}
		})
	case "revoke":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("api-tokens revoke ID")
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		if err := c.RevokeAPIToken(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "revoked API token %s\n", pos[0])
		return nil
	}
	return usageErrorf("api-tokens: unknown verb %q; want one of: %s", v, apiTokenVerbs)
}
