package lint

import (
	"encoding/json"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/lode-dev/lode/"

// allowed lists, per package, exactly the internal packages its non-test
// files import: an import outside its row fails, and so does a row entry
// the package does not import, so the table is the layout. Interfaces point
// inward: store, chunk and manifest know nothing of agents or fleets.
// Test-only helpers (storetest, fleettest, imagetest, tiertest, devicetest,
// lodetest) appear in no row but their own.
var allowed = map[string][]string{
	"internal/agent":                {"internal/chunk", "internal/manifest", "internal/metrics", "internal/store", "internal/trace"},
	"internal/agent/tiertest":       {"internal/agent", "internal/chunk", "internal/store"},
	"internal/blockdev":             {},
	"internal/blockdev/devicetest":  {"internal/blockdev"},
	"internal/blockdev/fuse":        {"internal/blockdev"},
	"internal/blockdev/nbd":         {"internal/blockdev"},
	"internal/blockdev/vhost":       {"internal/blockdev"},
	"internal/build":                {"internal/catalog", "internal/chunk", "internal/ext4img", "internal/manifest", "internal/oci", "internal/store"},
	"internal/cachefleet":           {"internal/chunk", "internal/fleetproto", "internal/metrics", "internal/store"},
	"internal/cachefleet/fleettest": {"internal/cachenode"},
	"internal/cachenode":            {"internal/certs", "internal/chunk", "internal/fleetproto", "internal/metrics"},
	"internal/catalog":              {"internal/chunk", "internal/manifest", "internal/profile", "internal/store"},
	"internal/certs":                {},
	"internal/chunk":                {},
	"internal/demo":                 {},
	"internal/ext4img":              {},
	"internal/fleetproto":           {"internal/chunk"},
	"internal/gc":                   {"internal/catalog", "internal/chunk", "internal/manifest", "internal/profile", "internal/store"},
	"internal/heatmap":              {"internal/chunk", "internal/manifest"},
	"internal/imagetest":            {"internal/build", "internal/catalog", "internal/manifest", "internal/store", "internal/store/file"},
	"internal/kms":                  {"internal/manifest", "internal/store/s3"}, // signs with the S3 store's credential chain
	"internal/lint":                 {},
	"internal/lodetest":             {},
	"internal/manifest":             {"internal/chunk"},
	"internal/metrics":              {},
	"internal/oci":                  {},
	"internal/profile":              {"internal/manifest", "internal/store"},
	"internal/run":                  {"internal/manifest"},
	"internal/snapshotter":          {"internal/catalog", "internal/store"},
	"internal/store":                {"internal/chunk"},
	"internal/store/file":           {"internal/store"},
	"internal/store/mem":            {"internal/store"},
	"internal/store/s3":             {"internal/metrics", "internal/store"},
	"internal/store/storetest":      {"internal/store"},
	"internal/store/storeurl":       {"internal/store", "internal/store/file", "internal/store/mem", "internal/store/s3"},
	"internal/trace":                {},
	"internal/vm":                   {"internal/blockdev"},
	"internal/worker":               {"internal/agent", "internal/blockdev", "internal/blockdev/fuse", "internal/blockdev/nbd", "internal/blockdev/vhost", "internal/cachefleet", "internal/catalog", "internal/certs", "internal/ext4img", "internal/heatmap", "internal/manifest", "internal/metrics", "internal/profile", "internal/run", "internal/store", "internal/trace", "internal/vm"},
}

type pkg struct {
	ImportPath string
	Imports    []string
}

func TestInternalImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-json", "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	rows := map[string]bool{}
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(p.ImportPath, module)
		if !strings.HasPrefix(rel, "internal/") {
			continue // cmd/lode may import everything
		}
		seen++
		allow, ok := allowed[rel]
		if !ok {
			t.Errorf("package %s has no row in the allowed-imports table (internal/lint/deps_test.go)", rel)
			continue
		}
		var bad []string
		for _, imp := range p.Imports {
			r, ok := strings.CutPrefix(imp, module)
			if !ok {
				continue
			}
			if !contains(allow, r) {
				bad = append(bad, r)
			}
		}
		sort.Strings(bad)
		if len(bad) > 0 {
			t.Errorf("%s imports %v, outside its allowed set %v", rel, bad, allow)
		}
		// The table says exactly what is imported: no allowance for an
		// import that does not exist, so the table reads as the layout.
		for _, a := range allow {
			if !contains(p.Imports, module+a) {
				t.Errorf("%s is allowed %s but does not import it: drop it from its row", rel, a)
			}
		}
		rows[rel] = true
	}
	for rel := range allowed {
		if !rows[rel] {
			t.Errorf("the allowed-imports table has a row for %s, which is not a package", rel)
		}
	}
	if seen < 10 {
		t.Fatalf("saw only %d internal packages; is go list looking at the module?", seen)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
