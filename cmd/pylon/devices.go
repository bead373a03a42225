package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/pylonhq/pylon"
)

const deviceVerbs = "list, create, get, update, delete, suspend, resume, decommission"

// runDevices implements `pylon devices VERB`.
func (e *cliEnv) runDevices(ctx context.Context, args []string) error {
	v, args, err := verb(args, deviceVerbs)
	if err != nil {
		return err
	}
	fs := e.flags("devices " + v)
	labels := labelsFlag{}
	switch v {
	case "list", "ls":
		var (
			state  = fs.String("state", "", "only devices in this `state`")
			query  = fs.String("q", "", "name contains `text`")
			online = fs.String("online", "", "true or false")
			limit  = fs.Int("limit", 100, "page `size`")
			cursor = fs.String("cursor", "", "page `cursor` from a previous list")
			all    = fs.Bool("all", false, "fetch every page")
		)
		fs.Var(labels, "label", "only devices with this `key=value` label (repeatable)")
		if _, err := parse(fs, args); err != nil {
			return err
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		f := pylon.DeviceFilter{Labels: labels, Query: *query, Limit: *limit, Cursor: *cursor}
		if *state != "" {
			s := pylon.DeviceState(*state)
			f.State = &s
		}
		if *online != "" {
			b, err := strconv.ParseBool(*online)
			if err != nil {
				return usageErrorf("--online: want true or false")
			}
			f.Online = &b
		}
		var devs []*pylon.Device
		next := ""
		for {
			page, n, err := c.ListDevices(ctx, f)
			if err != nil {
				return err
			}
			devs, next = append(devs, page...), n
			if !*all || n == "" {
				break
			}
			f.Cursor = n
		}
		if devs == nil {
			devs = []*pylon.Device{}
		}
		return e.print(map[string]any{"devices": devs, "next_cursor": next}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "ID\tNAME\tSTATE\tONLINE\tLAST SEEN\tLABELS")
			for _, d := range devs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%s\n", d.ID, d.Name, d.State, d.Online, fmtTime(d.LastSeen), formatLabels(d.Labels))
			}
			if next != "" {
				fmt.Fprintf(w, "(more: --cursor %s)\n", next)
			}
		})

	case "create":
		metadata := fs.String("metadata", "", "metadata as a JSON `object`")
		fs.Var(labels, "label", "`key=value` label (repeatable)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("devices create NAME [--label k=v]... [--metadata JSON]")
		}
		d := &pylon.Device{Name: pos[0], Labels: labels}
		if *metadata != "" {
			d.Metadata = json.RawMessage(*metadata)
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		if d, err = c.CreateDevice(ctx, d); err != nil {
			return err
		}
		return e.printDevice(d)

	case "get", "update", "delete", "suspend", "resume", "decommission":
		name := fs.String("name", "", "new `name` (update)")
		metadata := fs.String("metadata", "", "new metadata JSON `object` (update)")
		fs.Var(labels, "label", "`key=value` label; replaces all labels (update)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("devices %s ID|NAME", v)
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		d, err := resolveDevice(ctx, c, pos[0])
		if err != nil {
			return err
		}
		switch v {
		case "update":
			var upd pylon.DeviceUpdate
			if *name != "" {
				upd.Name = name
			}
			if len(labels) > 0 {
				m := map[string]string(labels)
				upd.Labels = &m
			}
			if *metadata != "" {
				raw := json.RawMessage(*metadata)
				upd.Metadata = &raw
			}
			d, err = c.UpdateDevice(ctx, d.ID, upd)
		case "delete":
			if err := c.DeleteDevice(ctx, d.ID); err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "deleted device %s (%s); its certificates are revoked and stay on the CRL until they expire\n", d.ID, d.Name)
			return nil
		case "suspend":
			d, err = c.SuspendDevice(ctx, d.ID)
		case "resume":
			d, err = c.ResumeDevice(ctx, d.ID)
		case "decommission":
			d, err = c.DecommissionDevice(ctx, d.ID)
		}
		if err != nil {
			return err
		}
		return e.printDevice(d)
	}
	return usageErrorf("devices: unknown verb %q; want one of: %s", v, deviceVerbs)
}

func (e *cliEnv) printDevice(d *pylon.Device) error {
	return e.print(d, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "ID\t%s\n", d.ID)
		fmt.Fprintf(w, "Name\t%s\n", d.Name)
		fmt.Fprintf(w, "State\t%s\n", d.State)
		fmt.Fprintf(w, "Online\t%v\n", d.Online)
		fmt.Fprintf(w, "Last seen\t%s\n", fmtTime(d.LastSeen))
		fmt.Fprintf(w, "Labels\t%s\n", orDash(formatLabels(d.Labels)))
		if len(d.Metadata) > 0 {
			fmt.Fprintf(w, "Metadata\t%s\n", d.Metadata)
		}
		fmt.Fprintf(w, "Created\t%s\n", fmtTime(&d.CreatedAt))
	})
}
