package senml_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps checks that the package, which devices import too, depends only
// on the standard library, the root package and the allowed modules.
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/pylonhq/pylon/senml").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	allowed := map[string]bool{
		"github.com/pylonhq/pylon":       true,
		"github.com/pylonhq/pylon/senml": true,
		// the CBOR encoder it shares with the store; standard library only
		"github.com/pylonhq/pylon/internal/cborenc": true,
	}
	for _, dep := range strings.Fields(string(out)) {
		if !allowed[dep] {
			t.Errorf("depends on %s, which is not allowed", dep)
		}
	}
}
