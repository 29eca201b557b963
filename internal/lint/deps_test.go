package lint

import (
	"encoding/json"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/lode-dev/lode/"

// allowed lists, per package, the internal packages its non-test files may
// import. Interfaces point inward: store, chunk and manifest know nothing of
// agents or fleets. Test-only helpers (storetest, fleettest, imagetest, tiertest, devicetest, lodetest) are
// not allowed in non-test files anywhere but their own packages.
var allowed = map[string][]string{
	"internal/chunk":                {},
	"internal/ext4img":              {},
	"internal/blockdev":             {},
	"internal/metrics":              {},
	"internal/oci":                  {},
	"internal/demo":                 {},
	"internal/heatmap":              {},
	"internal/lint":                 {},
	"internal/lodetest":             {},
	"internal/store":                {"internal/chunk"},
	"internal/manifest":             {"internal/chunk"},
	"internal/store/file":           {"internal/store", "internal/chunk", "internal/metrics"},
	"internal/store/mem":            {"internal/store", "internal/chunk"},
	"internal/store/s3":             {"internal/store", "internal/chunk", "internal/metrics"},
	"internal/store/storeurl":       {"internal/store", "internal/store/file", "internal/store/mem", "internal/store/s3", "internal/chunk", "internal/metrics"},
	"internal/store/storetest":      {"internal/store", "internal/chunk"},
	"internal/catalog":              {"internal/store", "internal/manifest", "internal/chunk"},
	"internal/build":                {"internal/oci", "internal/ext4img", "internal/chunk", "internal/manifest", "internal/store", "internal/metrics", "internal/catalog"},
	"internal/fleetproto":           {"internal/chunk"},
	"internal/cachenode":            {"internal/chunk", "internal/fleetproto", "internal/metrics"},
	"internal/cachefleet":           {"internal/chunk", "internal/fleetproto", "internal/store", "internal/metrics"},
	"internal/cachefleet/fleettest": {"internal/cachenode"},
	"internal/agent":                {"internal/chunk", "internal/manifest", "internal/store", "internal/metrics"},
	"internal/blockdev/fuse":        {"internal/blockdev", "internal/metrics"},
	"internal/blockdev/nbd":         {"internal/blockdev", "internal/metrics"},
	"internal/blockdev/vhost":       {"internal/blockdev", "internal/metrics"},
	"internal/gc":                   {"internal/chunk", "internal/manifest", "internal/store", "internal/metrics", "internal/catalog"},
	"internal/run":                  {"internal/agent", "internal/manifest", "internal/blockdev", "internal/blockdev/fuse"},
	"internal/vm":                   {"internal/blockdev"},
	"internal/snapshotter":          {"internal/catalog", "internal/store"},
	"internal/worker":               {"internal/agent", "internal/blockdev", "internal/blockdev/fuse", "internal/blockdev/nbd", "internal/cachefleet", "internal/catalog", "internal/gc", "internal/manifest", "internal/metrics", "internal/run", "internal/store"},
	"internal/agent/tiertest":       {"internal/agent", "internal/chunk", "internal/store"},
	"internal/blockdev/devicetest":  {"internal/blockdev"},
	"internal/imagetest":            {"internal/build", "internal/catalog", "internal/manifest", "internal/store", "internal/store/file"},
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
