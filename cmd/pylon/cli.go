package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

// cliEnv is what a client command needs from its process.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string

	// set by flags
	server, token, tokenFile, ca, output string

	// caRead is the CA certificate file client read, if it read one.
	caRead string
}

// flags returns a flag set with the connection and output flags.
func (e *cliEnv) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("pylon "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&e.server, "server", "", "server `URL` ($PYLON_SERVER, default https://localhost:8443)")
	fs.StringVar(&e.token, "token", "", "API `token` ($PYLON_TOKEN)")
	fs.StringVar(&e.tokenFile, "token-file", "", "`file` holding the API token ($PYLON_TOKEN_FILE, default ./pylon-data/admin.token)")
	fs.StringVar(&e.ca, "ca", "", "CA certificate `file` to trust ($PYLON_CA, default ./pylon-data/ca.crt)")
	fs.StringVar(&e.output, "o", "table", "output `format`: table or json")
	return fs
}

// parse parses args, allowing flags after positional arguments, and
// returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return pos, nil
}

// dataDir is where a local server keeps its files.
func (e *cliEnv) dataDir() string {
	if d := e.getenv("PYLON_DATA"); d != "" {
		return d
	}
	return "./pylon-data"
}

// pick returns flagVal if set, else the environment variable env if set,
// else def.
func (e *cliEnv) pick(flagVal, env, def string) string {
	if flagVal != "" {
		return flagVal
	} else if v := e.getenv(env); v != "" {
		return v
	}
	return def
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// enrollFlags are the flags of a command that acts as devices: the server
// they enroll with, the CA certificate they pin and the enrollment token.
type enrollFlags struct{ server, ca, token *string }

// addEnrollFlags defines the enrollFlags on fs.
func addEnrollFlags(fs *flag.FlagSet, caUsage, tokenUsage string) enrollFlags {
	return enrollFlags{
		server: fs.String("server", "", "server `URL` ($PYLON_SERVER; default https://localhost:8443)"),
		ca:     fs.String("ca", "", caUsage+" ($PYLON_CA; default ./pylon-data/ca.crt)"),
		token:  fs.String("enroll-token", "", tokenUsage+" ($PYLON_ENROLL_TOKEN)"),
	}
}

// resolve fills what the flags left unset from the environment and, next
// to a local server, the admin commands' defaults.
func (f enrollFlags) resolve(e *cliEnv) {
	*f.server = e.pick(*f.server, "PYLON_SERVER", "https://localhost:8443")
	*f.ca = e.pick(*f.ca, "PYLON_CA", filepath.Join(e.dataDir(), "ca.crt"))
	*f.token = e.pick(*f.token, "PYLON_ENROLL_TOKEN", "")
}

// client builds an API client from flags, environment and local defaults.
func (e *cliEnv) client() (*httpapi.Client, error) {
	if e.output != "table" && e.output != "json" {
		return nil, usageErrorf("-o must be table or json")
	}
	server := strings.TrimRight(e.pick(e.server, "PYLON_SERVER", "https://localhost:8443"), "/")
	token := e.pick(e.token, "PYLON_TOKEN", "")
	if token == "" {
		file := e.pick(e.tokenFile, "PYLON_TOKEN_FILE", filepath.Join(e.dataDir(), "admin.token"))
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("no API token: set --token or PYLON_TOKEN, or run next to a server's data directory (%v)", err)
		}
		token = strings.TrimSpace(string(b))
	}
	var caPEM []byte
	caFile := e.pick(e.ca, "PYLON_CA", filepath.Join(e.dataDir(), "ca.crt"))
	if b, err := os.ReadFile(caFile); err == nil {
		caPEM, e.caRead = b, caFile
	} else if e.ca != "" || e.getenv("PYLON_CA") != "" {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	return httpapi.NewClient(server, token, caPEM)
}

// print writes v as JSON (-o json) or calls table to write a table.
func (e *cliEnv) print(v any, table func(w *tabwriter.Writer)) error {
	if e.output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

// labelsFlag collects repeatable key=value flags.
type labelsFlag map[string]string

func (l labelsFlag) String() string { return formatLabels(l) }
func (l labelsFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return errors.New("want key=value")
	}
	l[k] = v
	return nil
}

func formatLabels(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sortStrings(parts)
	return strings.Join(parts, ",")
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// verb splits "pylon devices list ..." into the verb and its arguments.
func verb(args []string, verbs string) (string, []string, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		return "", nil, usageErrorf("want a verb, one of: %s (add -h after it for its flags)", verbs)
	}
	return args[0], args[1:], nil
}

// resolveDevice accepts a device id or a device name.
func resolveDevice(ctx context.Context, c *httpapi.Client, ref string) (*pylon.Device, error) {
	if pylon.ValidID(ref) {
		d, err := c.GetDevice(ctx, ref)
		if pylon.ErrorCode(err) != pylon.ENOTFOUND {
			return d, err
		}
	}
	name := ref
	devs, _, err := c.ListDevices(ctx, pylon.DeviceFilter{Name: &name, Limit: 1})
	if err != nil {
		return nil, err
	} else if len(devs) == 0 {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "no device with id or name %q", ref)
	}
	return devs[0], nil
}
