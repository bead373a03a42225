package device_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the SDK small: it must not pull in the platform's
// storage, broker, HTTP server, CA or metrics (as tailscale's
// cmd/tailscaled/deps_test.go does for its daemon).
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/pylonhq/pylon/sdk/device").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list printed no dependencies")
	}
	forbidden := []string{"sqlite", "postgres", "/broker", "httpapi", "/ingest", "/pki", "dashboard", "modernc", "pgx", "prometheus", "mochi-mqtt"}
	for _, dep := range deps {
		for _, f := range forbidden {
			if strings.Contains(dep, f) {
				t.Errorf("sdk/device depends on %s (matches %q)", dep, f)
			}
		}
		if strings.HasPrefix(dep, "github.com/pylonhq/pylon/") {
			switch strings.TrimPrefix(dep, "github.com/pylonhq/pylon/") {
			case "envelope", "senml", "internal/cborenc", "est", "sdk/device":
			default:
				t.Errorf("sdk/device imports the project package %s; only envelope, senml (with internal/cborenc) and est are allowed", dep)
			}
		}
	}
}
