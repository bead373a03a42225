// Command pylon is the Pylon IoT platform in one binary: the server
// (`pylon serve`), the admin command-line client (`pylon devices ...`,
// `pylon tokens ...`, `pylon audit ...`) and the device tools.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/internal/heapfloor"
	"github.com/pylonhq/pylon/pki"
)

const usage = `Pylon: a secure IoT device platform.

Usage:
  pylon serve [flags]            start the platform (HTTPS API, MQTT broker, CA, store)
  pylon devices <verb> [flags]   list | create | get | update | delete | suspend | resume | decommission
  pylon tokens <verb> [flags]    enrollment tokens: create | list | revoke
  pylon certs <verb> [flags]     device certificates: list | get | revoke
  pylon api-tokens <verb>        API tokens: create | list | revoke
  pylon audit <verb>             audit log: list | verify
  pylon readings <verb>          telemetry: list | latest | agg | watch | rejected
  pylon bench enroll|ingest      measure a running server (EST enrollments/s, telemetry ingest)
  pylon enroll --enroll-token T D enroll a device into directory D (its own key, EST)
  pylon seal --key F --seq N     sign a SenML JSON pack (stdin) as a telemetry message (stdout)
  pylon sim --devices N --rate R simulate a fleet of SDK devices against a server
  pylon version                  print the version
  pylon help                     this text

Client commands find the server with --server, --token and --ca, or
PYLON_SERVER, PYLON_TOKEN and PYLON_CA; next to a local server they default
to https://localhost:8443, ./pylon-data/admin.token and ./pylon-data/ca.crt.
Add -o json for machine-readable output. "pylon <command> -h" shows flags.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	env := &cliEnv{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = runServe(ctx, rest, stdout, stderr)
	case "devices", "device":
		err = env.runDevices(ctx, rest)
	case "tokens", "enrollment-tokens":
		err = env.runTokens(ctx, rest)
	case "certs", "certificates":
		err = env.runCerts(ctx, rest)
	case "api-tokens":
		err = env.runAPITokens(ctx, rest)
	case "audit":
		err = env.runAudit(ctx, rest)
	case "readings":
		err = env.runReadings(ctx, rest)
	case "bench":
		err = env.runBench(ctx, rest)
	case "enroll":
		err = env.runEnroll(ctx, rest)
	case "seal":
		err = env.runSeal(ctx, rest)
	case "sim":
		err = env.runSim(ctx, rest)
	case "version", "--version":
		fmt.Fprintln(stdout, "pylon", pylon.Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "pylon: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "pylon:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "pylon:", errorText(err))
		return 1
	}
}

// errorText renders a domain error as "message (code)".
func errorText(err error) string {
	if code := pylon.ErrorCode(err); code != pylon.EINTERNAL {
		return fmt.Sprintf("%s (%s)", pylon.ErrorMessage(err), code)
	}
	return err.Error()
}

// errUsage marks command-line mistakes (exit code 2).
var errUsage = errors.New("usage")

func usageErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// runServe runs the platform until SIGINT or SIGTERM.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, check, err := loadConfig(args, os.Getenv, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErrorf("%v", err)
	}
	if check {
		// The data directory's keys and certificates too, as serve would
		// load them; missing ones would be created.
		if err := pki.CheckFiles(cfg.Data, time.Now()); err != nil {
			return fmt.Errorf("data: %w", err)
		}
		fmt.Fprintln(stdout, "configuration OK")
		return nil
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	m := NewMain()
	m.Config = cfg
	m.Stdout = stdout
	m.Logger = newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	// A heap goal of at least heapfloor.DefaultFloor, unless the operator
	// tunes the collector (docs/operations.md).
	if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
		defer heapfloor.Start(heapfloor.DefaultFloor)()
		m.Logger.Debug("garbage collector heap floor", "bytes", heapfloor.DefaultFloor)
	}
	if err := m.Run(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	m.Logger.Info("shutting down")
	if err := m.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	m.Logger.Info("stopped")
	return nil
}
