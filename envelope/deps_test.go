package envelope_test

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
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/pylonhq/pylon/envelope").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	allowed := []string{
		"github.com/pylonhq/pylon",
		"github.com/pylonhq/pylon/envelope",
		"github.com/pylonhq/pylon/internal/cborenc", // standard library only
		"github.com/fxamacker/cbor/v2",
		"github.com/x448/float16", // of fxamacker/cbor
		"github.com/veraison/go-cose",
		"github.com/klauspost/compress",
		"github.com/klauspost/compress/",
	}
	for _, dep := range strings.Fields(string(out)) {
		ok := false
		for _, a := range allowed {
			if dep == a || strings.HasSuffix(a, "/") && strings.HasPrefix(dep, a) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("depends on %s, which is not allowed", dep)
		}
	}
}
