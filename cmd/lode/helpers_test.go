package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/demo"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/worker"
)

// testDir holds what tests of this binary share: the sample image and its
// unpacked oracle.
var testDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lode-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	testDir = dir
	// A test that times out must not leave this process serving mounts it
	// reads itself: it could not exit (see fuse.AbortAll).
	stop := lodetest.BeforeTimeout(20*time.Second, func() {
		fmt.Fprintf(os.Stderr, "test timeout near: aborted %d FUSE connections\n", fuse.AbortAll())
	})
	code := m.Run()
	stop()
	lodetest.StopS3Servers()
	os.RemoveAll(dir)
	os.Exit(code)
}

// samplePayload keeps the demo's unused payload layer small.
const samplePayload = 8 << 20

var (
	sampleMu     sync.Mutex
	sampleSource string
	sampleOracle string
)

// sample writes the demo's multi-layer OCI image once per test binary and
// returns its build source.
func sample(t *testing.T) string {
	t.Helper()
	sampleMu.Lock()
	defer sampleMu.Unlock()
	if sampleSource == "" {
		src, err := demo.WriteSample(context.Background(), filepath.Join(testDir, "sample"), demo.Options{PayloadBytes: samplePayload})
		if err != nil {
			t.Fatalf("writing the sample image: %v", err)
		}
		sampleSource = src
	}
	return sampleSource
}

// oracle returns the sample's merged rootfs as GNU tar extracts its layers,
// base first, into one directory: what a mount of the image must show (the
// sample's layers only add files, so no whiteouts need applying). It is
// written once per test binary.
func oracle(t *testing.T) string {
	t.Helper()
	lodetest.Require(t, lodetest.Root, lodetest.Tool("tar"))
	src := sample(t)
	sampleMu.Lock()
	defer sampleMu.Unlock()
	if sampleOracle != "" {
		return sampleOracle
	}
	layout := strings.TrimSuffix(strings.TrimPrefix(src, "oci:"), ":"+demo.Tag)
	var index struct {
		Manifests []struct{ Digest string }
	}
	var man struct {
		Layers []struct{ Digest string }
	}
	readJSON(t, filepath.Join(layout, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("the sample layout has %d images, want 1", len(index.Manifests))
	}
	readJSON(t, blobPath(layout, index.Manifests[0].Digest), &man)
	root := filepath.Join(testDir, "oracle")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range man.Layers {
		args := []string{"-x", "-z", "-f", blobPath(layout, l.Digest), "-C", root, "--same-owner", "--same-permissions", "--numeric-owner", "--xattrs", "--xattrs-include=user.*"}
		if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
			t.Fatalf("tar %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	sampleOracle = root
	return root
}

func readJSON(t *testing.T, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

func blobPath(layout, digest string) string {
	alg, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(layout, "blobs", alg, hex)
}

// syncBuffer is a test log or output written from several goroutines.
type syncBuffer = lodetest.SyncBuffer

// waitFor polls f until it holds; the limit only guards against a hang.
func waitFor(t *testing.T, what string, errc <-chan error, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !f() {
		select {
		case err := <-errc:
			t.Fatalf("waiting for %s: the command returned %v", what, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cli is one user's lode: a home directory, and the package variables
// (global flags, stdout, stderr, logger) pointed at it and at buffers.
type cli struct {
	home           string
	stdout, stderr *syncBuffer
	log            *syncBuffer
}

// newCLI sets the global options as "lode --home HOME" would and restores
// them when t ends. Tests that use it must not run in parallel.
func newCLI(t *testing.T) *cli {
	t.Helper()
	savedGlobal, savedOut, savedErr, savedLog := global, stdout, stderr, logger
	t.Cleanup(func() { global, stdout, stderr, logger = savedGlobal, savedOut, savedErr, savedLog })
	c := &cli{home: t.TempDir(), stdout: &syncBuffer{}, stderr: &syncBuffer{}, log: &syncBuffer{}}
	global = globalOptions{home: c.home, tenant: "default", logLevel: "info", logFormat: "text"}
	stdout, stderr = c.stdout, c.stderr
	logger = slog.New(slog.NewTextHandler(c.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return c
}

// workerOpts are the worker flags' defaults, scaled down for tests.
func (c *cli) workerOpts() worker.Options {
	return worker.Options{
		CacheDir: filepath.Join(c.home, "cache"), DiskBytes: 256 << 20, MemBytes: 64 << 20,
		FetchTimeout: 20 * time.Second, ReadAhead: 4, Fetches: 8,
		AllowStoreSecret: true, // tests build and serve with one keyring
	}
}

var (
	goldenMu   sync.Mutex
	goldenHome string // a home where "lode keys create; lode build SAMPLE --name demo" ran
)

// buildSample gives c's home a keyring and a store holding the sample
// built as default/demo, plus the built ext4 image, whose path it returns.
// The build runs once per test binary (through runKeysCreate and runBuild
// in a home of its own); each test gets a copy, so it may change its
// store and keyring freely.
func (c *cli) buildSample(t *testing.T) string {
	t.Helper()
	src := sample(t)
	goldenMu.Lock()
	defer goldenMu.Unlock()
	if goldenHome == "" {
		home := filepath.Join(testDir, "golden")
		saved := global
		global = globalOptions{home: home, tenant: "default"}
		var out bytes.Buffer
		err := runKeysCreate(&out)
		if err == nil {
			bo := defaultBuildOptions()
			bo.name, bo.keepImage = "demo", filepath.Join(home, "demo.ext4")
			err = runBuild(context.Background(), bo, src, &out)
		}
		global = saved
		if err != nil {
			t.Fatalf("building the sample: %v\n%s", err, out.String())
		}
		goldenHome = home
	}
	for _, name := range []string{"store", "keyring.json", "demo.ext4"} {
		if out, err := exec.Command("cp", "-a", filepath.Join(goldenHome, name), c.home).CombinedOutput(); err != nil {
			t.Fatalf("copying the built sample: %v\n%s", err, out)
		}
	}
	return filepath.Join(c.home, "demo.ext4")
}

// execLode runs "lode ARGS" through cobra as a user would, with --home set,
// and restores the global options the run overwrote.
func (c *cli) execLode(t *testing.T, args ...string) error {
	t.Helper()
	saved := global
	defer func() { global = saved }()
	cmd := newRootCmd()
	cmd.SetArgs(append([]string{"--home", c.home, "--tenant", saved.tenant, "--log-level", "info"}, args...))
	return cmd.ExecuteContext(context.Background())
}

// isMounted reports whether dir is a mount point in /proc/self/mountinfo.
func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

// entry is what the tree comparison checks of one path.

// resolveDemo opens the test's store and keyring and resolves the sample
// image "demo" of tenant "default".
func resolveDemo(t *testing.T) (store.Store, *manifest.FileKeyring, *manifest.Manifest, store.Pointer) {
	t.Helper()
	ctx := context.Background()
	st, err := openStore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := openKeyring()
	if err != nil {
		t.Fatal(err)
	}
	m, p, err := catalog.Resolve(ctx, st, kr, "default", "demo")
	if err != nil {
		t.Fatal(err)
	}
	return st, kr, m, p
}
