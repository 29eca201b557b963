package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/worker"
)

// runningAgent is runAgentDaemon serving in the background.
type runningAgent struct {
	socket, stateDir string
	cancel           context.CancelFunc
	errc             chan error
	client           *worker.Client
}

// startAgent runs "lode agent" on a socket in c's home until the test ends
// (or stop is called), and returns once the socket serves.
func (c *cli) startAgent(t *testing.T) *runningAgent {
	t.Helper()
	a := &runningAgent{socket: filepath.Join(c.home, "run", "agent.sock"), stateDir: filepath.Join(c.home, "mounts"), errc: make(chan error, 1)}
	o := agentOptions{d: worker.DaemonConfig{Socket: a.socket, StateDir: a.stateDir, Worker: c.workerOpts()}}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	ready := make(chan struct{})
	go func() { a.errc <- runAgent(ctx, o, ready) }()
	select {
	case <-ready:
	case err := <-a.errc:
		t.Fatalf("lode agent returned before serving: %v", err)
	}
	t.Cleanup(func() { a.stop(t) })
	a.client = worker.NewClient(a.socket)
	return a
}

// stop cancels the daemon and returns its error (once; later calls nil).
func (a *runningAgent) stop(t *testing.T) error {
	t.Helper()
	if a.cancel == nil {
		return nil
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.errc:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("lode agent did not return after cancel")
		return nil
	}
}

func (a *runningAgent) status(t *testing.T) worker.Status {
	t.Helper()
	st, err := a.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// metric returns the value of the sample line starting with series in the
// daemon's /metrics (served on the socket), 0 if absent.
func (a *runningAgent) metric(t *testing.T, series string) float64 {
	t.Helper()
	text, err := a.client.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return v
		}
	}
	return 0
}

func mountFor(st worker.Status, dir string) (worker.ServedStatus, bool) {
	for _, m := range st.Mounts {
		if m.Dir == dir {
			return m, true
		}
	}
	return worker.ServedStatus{}, false
}

func tierHits(s worker.ServedStatus, tier string) int64 {
	for _, t := range s.Stats.Tiers {
		if t.Tier == tier {
			return t.Hits
		}
	}
	return -1
}

// lodeMountsUnder lists mount points in /proc/self/mountinfo under any of
// dirs.
func lodeMountsUnder(t *testing.T, dirs ...string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, d := range dirs {
			if f[4] == d || strings.HasPrefix(f[4], d+"/") {
				out = append(out, f[4])
			}
		}
	}
	return out
}

func TestAgentDaemon(t *testing.T) {
	requireMount(t)
	c := newCLI(t)
	c.buildSample(t)
	a := c.startAgent(t)
	fi, err := os.Stat(a.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode = %v, want a socket with 0600", fi.Mode())
	}
	mnt := t.TempDir()
	dir1, dir2 := filepath.Join(mnt, "one"), filepath.Join(mnt, "two")

	// First mount through the CLI client.
	if err := c.execLode(t, "agent", "--socket", a.socket, "mount", "demo", dir1); err != nil {
		t.Fatalf("lode agent mount: %v", err)
	}
	if out := c.stdout.String(); !strings.Contains(out, mountedLine+"default/demo at "+dir1) {
		t.Errorf("lode agent mount printed %q", out)
	}
	readFiles := func(dir string) (string, [32]byte) {
		t.Helper()
		osr, err := os.ReadFile(filepath.Join(dir, "etc/os-release"))
		if err != nil {
			t.Fatal(err)
		}
		model, err := os.ReadFile(filepath.Join(dir, "data/model.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if len(model) < 1<<20 {
			t.Fatalf("data/model.bin has %d bytes", len(model))
		}
		return string(osr), sha256.Sum256(model)
	}
	osr1, model1 := readFiles(dir1)
	if want := "PRETTY_NAME=\"lode sample image\"\nID=lode-sample\n"; osr1 != want {
		t.Errorf("etc/os-release = %q, want %q", osr1, want)
	}

	// Status as JSON through the CLI.
	before := len(c.stdout.String())
	if err := c.execLode(t, "agent", "--socket", a.socket, "status", "--json"); err != nil {
		t.Fatalf("lode agent status --json: %v", err)
	}
	var st worker.Status
	if err := json.Unmarshal([]byte(c.stdout.String()[before:]), &st); err != nil {
		t.Fatalf("status --json output: %v\n%s", err, c.stdout.String()[before:])
	}
	m1, ok := mountFor(st, dir1)
	if !ok || len(st.Mounts) != 1 {
		t.Fatalf("status lists mounts %+v, want only %s", st.Mounts, dir1)
	}
	if m1.Image != "demo" || m1.Tenant != "default" || len(m1.Roots) != 1 || !strings.HasPrefix(m1.Loop, "/dev/loop") {
		t.Errorf("status of the mount = %+v", m1)
	}
	if m1.Stats.FetchedBytes <= 0 || tierHits(m1, "origin") <= 0 || m1.Stats.BytesRead <= 0 {
		t.Errorf("first mount fetched %d bytes (origin hits %d, read %d), want > 0", m1.Stats.FetchedBytes, tierHits(m1, "origin"), m1.Stats.BytesRead)
	}
	// The store is a file store, an origin on local disk: chunks are not
	// written back into the disk cache (worker.Parts.LocalOrigin).
	if st.MemCacheBytes <= 0 || st.DiskCacheBytes != 0 {
		t.Errorf("caches hold mem %d, disk %d bytes after a read from a file store, want > 0 and 0", st.MemCacheBytes, st.DiskCacheBytes)
	}
	before = len(c.stdout.String())
	if err := c.execLode(t, "agent", "--socket", a.socket, "status"); err != nil {
		t.Fatal(err)
	}
	if out := c.stdout.String()[before:]; !strings.Contains(out, "mount "+dir1+": default/demo") {
		t.Errorf("lode agent status printed %q", out)
	}

	// A second mount of the same image reads what the first read from the
	// warm L1: nothing more from the origin.
	originHits := a.metric(t, `lode_agent_tier_requests_total{result="hit",tier="origin"}`)
	if originHits <= 0 {
		t.Errorf("origin hits metric = %v after the first mount's reads", originHits)
	}
	_, err = a.client.Mount(context.Background(), worker.MountRequest{Image: "demo", Dir: dir2})
	if err != nil {
		t.Fatal(err)
	}
	osr2, model2 := readFiles(dir2)
	if osr2 != osr1 || model2 != model1 {
		t.Errorf("the second mount reads different bytes")
	}
	st = a.status(t)
	m2, ok := mountFor(st, dir2)
	if !ok || len(st.Mounts) != 2 {
		t.Fatalf("status lists %d mounts, want 2 with %s", len(st.Mounts), dir2)
	}
	if got := tierHits(m2, "origin"); got != 0 {
		t.Errorf("the second mount fetched %d chunks from the origin, want 0 (warm L1)", got)
	}
	if m2.Stats.MemHits+tierHits(m2, "disk") <= 0 || m2.Stats.BytesRead <= 0 {
		t.Errorf("the second mount's reads came from nowhere: %+v", m2.Stats)
	}
	if got := a.metric(t, `lode_agent_tier_requests_total{result="hit",tier="origin"}`); got != originHits {
		t.Errorf("origin hits went from %v to %v during the second mount", originHits, got)
	}
	if got := a.metric(t, "lode_agent_mounts"); got != 2 {
		t.Errorf("lode_agent_mounts = %v, want 2", got)
	}
	// The second start resolved the image from the daemon's caches: the
	// manifest was read and opened once (the pointer too, unless more than
	// --resolve-ttl passed between the mounts).
	if r, m := a.metric(t, "lode_agent_resolves_total"), a.metric(t, "lode_agent_manifest_reads_total"); r != 2 || m != 1 {
		t.Errorf("two mounts resolved %v times and read %v manifests, want 2 and 1", r, m)
	}

	// Mounting over a served dir conflicts.
	_, err = a.client.Mount(context.Background(), worker.MountRequest{Image: "demo", Dir: dir2})
	if err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("a second mount at %s = %v, want a conflict", dir2, err)
	}
	_, err = a.client.Mount(context.Background(), worker.MountRequest{Image: "nope", Dir: filepath.Join(mnt, "x")})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("mounting a missing image = %v, want an error naming it", err)
	}

	// Unmount through the CLI.
	if err := c.execLode(t, "agent", "--socket", a.socket, "umount", dir1); err != nil {
		t.Fatalf("lode agent umount: %v", err)
	}
	if isMounted(t, dir1) {
		t.Errorf("%s is still mounted after lode agent umount", dir1)
	}
	if st := a.status(t); len(st.Mounts) != 1 || st.Mounts[0].Dir != dir2 {
		t.Errorf("after umount the agent lists %+v, want only %s", st.Mounts, dir2)
	}

	// An NBD export of the same image.
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		sock := filepath.Join(c.home, "run", "nbd.sock")
		es, err := a.client.Export(context.Background(), worker.ExportRequest{Image: "demo", Listen: "unix:" + sock})
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("nbdinfo", "--size", "nbd+unix:///demo?socket="+sock).CombinedOutput()
		if err != nil {
			t.Fatalf("nbdinfo: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != strconv.FormatInt(es.Stats.ImageSize, 10) {
			t.Errorf("nbdinfo --size = %s, want %d", got, es.Stats.ImageSize)
		}
		if st := a.status(t); len(st.Exports) != 1 || st.Exports[0].Export != "demo" {
			t.Errorf("status lists exports %+v", st.Exports)
		}
	}

	// Cancel: everything is torn down and the daemon returns nil.
	if err := a.stop(t); err != nil {
		t.Errorf("lode agent after cancel = %v", err)
	}
	if left := lodeMountsUnder(t, mnt, a.stateDir); len(left) != 0 {
		t.Errorf("mounts left after the agent stopped: %v", left)
	}
	if _, err := os.Stat(a.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket is left after the agent stopped: %v", err)
	}
}

func TestAgentSocketInUse(t *testing.T) {
	c := newCLI(t)
	c.buildSample(t)
	a := c.startAgent(t)
	err := runAgent(context.Background(), agentOptions{d: worker.DaemonConfig{Socket: a.socket, StateDir: a.stateDir, Worker: c.workerOpts()}}, nil)
	if err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Errorf("a second agent on %s = %v, want a refusal", a.socket, err)
	}
	// The first one still answers.
	if st := a.status(t); len(st.Mounts) != 0 {
		t.Errorf("status = %+v", st)
	}
}
