package run

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
)

// probeReport is what testdata/probe prints.
type probeReport struct {
	Args     []string
	Env      []string
	Cwd      string
	UID, GID int
	Groups   []int
	Hostname string
}

var probe struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if probe.dir != "" {
		os.RemoveAll(probe.dir)
	}
	os.Exit(code)
}

// probeBinary compiles testdata/probe statically, once per test binary.
func probeBinary(t testing.TB) string {
	t.Helper()
	probe.once.Do(func() {
		probe.dir, probe.err = os.MkdirTemp("", "lode-run-probe-")
		if probe.err != nil {
			return
		}
		probe.path = filepath.Join(probe.dir, "probe")
		cmd := exec.Command("go", "build", "-o", probe.path, "./testdata/probe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			probe.err = fmt.Errorf("building probe: %v: %s", err, out)
		}
	})
	if probe.err != nil {
		t.Fatal(probe.err)
	}
	return probe.path
}

// makeRootfs builds a tiny image root: /probe, /etc/passwd and /etc/group
// with user app (1000:1000), a /data dir app can write, and /srv.
func makeRootfs(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	bin, err := os.ReadFile(probeBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
		"srv/hello":  "hello from the image\n",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "probe"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"data", "home/app"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(filepath.Join(root, d), 1000, 1000); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// checkClean asserts that nothing of the run is left: no mount under
// stateDir, no runtime state for id, and (unless kept) no stateDir.
func checkClean(t *testing.T, stateDir, id string, kept bool) {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(mi, []byte(stateDir)) {
		t.Errorf("mount under %s left in /proc/self/mountinfo", stateDir)
	}
	out, err := exec.Command("runc", "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc list: %v", err)
	}
	if slices.Contains(strings.Fields(string(out)), id) {
		t.Errorf("runc list still has container %s", id)
	}
	_, err = os.Stat(stateDir)
	if !kept && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir %s left behind (stat: %v)", stateDir, err)
	}
	if kept && err != nil {
		t.Errorf("kept state dir %s: %v", stateDir, err)
	}
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func requireRunc(t testing.TB) {
	lodetest.Require(t, lodetest.Root, lodetest.Tool("runc"))
}

func TestRunProbe(t *testing.T) {
	requireRunc(t)
	lower := makeRootfs(t)
	tests := []struct {
		name       string
		cfg        manifest.Config
		entrypoint []string
		args       []string
		exit       string
		wantArgs   []string
		wantCode   int
		wantUID    int
		wantGID    int
		wantGroups []int
		wantCwd    string
		wantHome   string
	}{
		{
			name:     "image entrypoint and cmd as root",
			cfg:      manifest.Config{Entrypoint: []string{"/probe"}, Cmd: []string{"c1", "c2"}},
			wantArgs: []string{"/probe", "c1", "c2"}, wantCwd: "/", wantHome: "/root",
		},
		{
			name:     "args replace cmd; user, workdir, exit 7",
			cfg:      manifest.Config{Entrypoint: []string{"/probe"}, Cmd: []string{"c1"}, User: "app", WorkingDir: "/srv"},
			args:     []string{"a1", "a 2"},
			exit:     "7",
			wantArgs: []string{"/probe", "a1", "a 2"}, wantCode: 7,
			wantUID: 1000, wantGID: 1000, wantGroups: []int{2000}, wantCwd: "/srv", wantHome: "/home/app",
		},
		{
			name:       "entrypoint override drops cmd; uid:gid",
			cfg:        manifest.Config{Entrypoint: []string{"/nonexistent"}, Cmd: []string{"c1"}, User: "1000:2000"},
			entrypoint: []string{"/probe", "e1"},
			wantArgs:   []string{"/probe", "e1"}, wantUID: 1000, wantGID: 2000,
			wantCwd: "/", wantHome: "/home/app",
		},
		{
			name:     "cmd-only image replaced by args",
			cfg:      manifest.Config{Cmd: []string{"/nonexistent"}},
			args:     []string{"/probe", "only"},
			wantArgs: []string{"/probe", "only"}, wantCwd: "/", wantHome: "/root",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			id := fmt.Sprintf("lode-test-%d", time.Now().UnixNano())
			var stdout, stderr bytes.Buffer
			cfg := tc.cfg
			cfg.Env = []string{"IMAGE_VAR=from-image", "OVERRIDE=image"}
			res, err := Run(context.Background(), Options{
				Lower: lower, StateDir: state, ID: id,
				Config: cfg, Entrypoint: tc.entrypoint, Args: tc.args,
				Env:    []string{"OVERRIDE=option", "PROBE_EXIT=" + tc.exit},
				Stdout: &stdout, Stderr: &stderr,
				Network: NetworkNone,
				Log:     testLogger(t),
			})
			if err != nil {
				t.Fatalf("Run: %v (stderr %q)", err, stderr.String())
			}
			if res.ExitCode != tc.wantCode {
				t.Errorf("ExitCode = %d, want %d", res.ExitCode, tc.wantCode)
			}
			if res.FirstExec <= 0 || res.Total < res.FirstExec || res.Started.IsZero() {
				t.Errorf("times: FirstExec %v Total %v Started %v; want 0 < FirstExec <= Total", res.FirstExec, res.Total, res.Started)
			}
			var rep probeReport
			if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
				t.Fatalf("decoding probe output %q: %v", stdout.String(), err)
			}
			if got := stderr.String(); got != "probe: to stderr\n" {
				t.Errorf("stderr = %q, want %q", got, "probe: to stderr\n")
			}
			if diff := cmp.Diff(tc.wantArgs, rep.Args); diff != "" {
				t.Errorf("args mismatch (-want +got):\n%s", diff)
			}
			if rep.UID != tc.wantUID || rep.GID != tc.wantGID {
				t.Errorf("uid:gid = %d:%d, want %d:%d", rep.UID, rep.GID, tc.wantUID, tc.wantGID)
			}
			slices.Sort(rep.Groups)
			if diff := cmp.Diff(tc.wantGroups, rep.Groups, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("groups mismatch (-want +got):\n%s", diff)
			}
			if rep.Cwd != tc.wantCwd {
				t.Errorf("cwd = %q, want %q", rep.Cwd, tc.wantCwd)
			}
			env := envMap(rep.Env)
			for k, want := range map[string]string{
				"IMAGE_VAR": "from-image", "OVERRIDE": "option", "PATH": DefaultPath,
				"HOME": tc.wantHome, "HOSTNAME": id,
			} {
				if env[k] != want {
					t.Errorf("env %s = %q, want %q (env %q)", k, env[k], want, rep.Env)
				}
			}
			if rep.Hostname != id {
				t.Errorf("hostname = %q, want the container id %q", rep.Hostname, id)
			}
			checkClean(t, state, id, false)
		})
	}
}

// TestRunWritesGoToUpper: the container writes into the overlay's upper dir;
// the read-only lower is untouched. Uses a read-only ext4 loop mount as the
// lower, like the real lazily loaded image.
func TestRunWritesGoToUpper(t *testing.T) {
	requireRunc(t)
	lodetest.Require(t, lodetest.Loop, lodetest.Tool("mkfs.ext4"))
	src := makeRootfs(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "image.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	lower := filepath.Join(dir, "lower")
	if err := os.Mkdir(lower, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "ro,loop", img, lower).CombinedOutput(); err != nil {
		t.Fatalf("mount -o ro,loop: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", lower).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", lower, err, out)
		}
	})

	state := filepath.Join(dir, "state")
	id := fmt.Sprintf("lode-test-%d", time.Now().UnixNano())
	outFile, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	res, err := Run(context.Background(), Options{
		Lower: lower, StateDir: state, ID: id, Keep: true,
		Config: manifest.Config{Entrypoint: []string{"/probe"}, User: "app", WorkingDir: "/data"},
		Env:    []string{"PROBE_WRITE=/data/out.txt"},
		Stdout: outFile, // an *os.File goes to the container as it is
		Log:    testLogger(t),
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("ExitCode = %d, want 0", res.ExitCode)
	}
	out, err := os.ReadFile(outFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	var rep probeReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("decoding probe output %q: %v", out, err)
	}
	if rep.UID != 1000 || rep.Cwd != "/data" {
		t.Errorf("probe ran as %d in %q, want 1000 in /data", rep.UID, rep.Cwd)
	}
	got, err := os.ReadFile(filepath.Join(state, "upper/data/out.txt"))
	if err != nil {
		t.Fatalf("reading the container's write from upper: %v", err)
	}
	if string(got) != "written by probe\n" {
		t.Errorf("upper/data/out.txt = %q", got)
	}
	if _, err := os.Stat(filepath.Join(lower, "data/out.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lower has data/out.txt (stat: %v), want untouched", err)
	}
	if _, err := os.Stat(filepath.Join(src, "data/out.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("source tree has data/out.txt (stat: %v), want untouched", err)
	}
	checkClean(t, state, id, true)
}

// TestRunHostNetwork: with the host network the container gets the host's
// name, and the host's /etc/hosts bind-mounted read-only.
func TestRunHostNetwork(t *testing.T) {
	requireRunc(t)
	lower := makeRootfs(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      []string
		wantCode int
	}{
		{name: "hostname"},
		{name: "hosts is read-only", env: []string{"PROBE_WRITE=/etc/hosts"}, wantCode: 99},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantCode == 99 {
				_, err := os.Stat("/etc/hosts")
				lodetest.Require(t, lodetest.Holds(err))
			}
			state := filepath.Join(t.TempDir(), "state")
			var stdout bytes.Buffer
			res, err := Run(context.Background(), Options{
				Lower: lower, StateDir: state,
				Config: manifest.Config{Entrypoint: []string{"/probe"}},
				Env:    tc.env,
				Stdout: &stdout, Log: testLogger(t),
			})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.ExitCode != tc.wantCode {
				t.Fatalf("ExitCode = %d, want %d", res.ExitCode, tc.wantCode)
			}
			if tc.wantCode == 0 {
				var rep probeReport
				if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
					t.Fatalf("decoding probe output %q: %v", stdout.String(), err)
				}
				if rep.Hostname != host || envMap(rep.Env)["HOSTNAME"] != host {
					t.Errorf("hostname = %q, HOSTNAME = %q, want the host's %q", rep.Hostname, envMap(rep.Env)["HOSTNAME"], host)
				}
			}
			checkClean(t, state, "", false)
		})
	}
}

// cancelOnLine cancels when a line of output equals line.
type cancelOnLine struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	line   string
	cancel context.CancelFunc
}

func (w *cancelOnLine) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	sc := bufio.NewScanner(bytes.NewReader(w.buf.Bytes()))
	for sc.Scan() {
		if sc.Text() == w.line {
			w.cancel()
		}
	}
	return len(p), nil
}

func TestRunCancel(t *testing.T) {
	requireRunc(t)
	lower := makeRootfs(t)
	tests := []struct {
		name     string
		env      []string
		wantCode int
	}{
		{name: "SIGTERM handled", env: []string{"PROBE_SLEEP=60s"}, wantCode: 42},
		{name: "SIGTERM ignored, then SIGKILL", env: []string{"PROBE_SLEEP=60s", "PROBE_IGNORE_TERM=1"}, wantCode: 128 + 9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			state := filepath.Join(t.TempDir(), "state")
			id := fmt.Sprintf("lode-test-%d", time.Now().UnixNano())
			w := &cancelOnLine{line: "sleeping", cancel: cancel}
			res, err := Run(ctx, Options{
				Lower: lower, StateDir: state, ID: id,
				Config:    manifest.Config{Entrypoint: []string{"/probe"}},
				Env:       tc.env,
				Stdout:    w,
				KillGrace: 300 * time.Millisecond,
				Network:   NetworkNone,
				Log:       testLogger(t),
			})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run error = %v, want context.Canceled", err)
			}
			if res.ExitCode != tc.wantCode {
				t.Errorf("ExitCode = %d, want %d", res.ExitCode, tc.wantCode)
			}
			checkClean(t, state, id, false)
		})
	}
}

func TestRunSetupErrors(t *testing.T) {
	requireRunc(t)
	lower := makeRootfs(t)
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       Options
		wantErr error  // nil: any error
		wantMsg string // substring of the error
	}{
		{name: "no lower", o: Options{Config: manifest.Config{Cmd: []string{"/probe"}}}, wantErr: ErrBadOptions},
		{name: "bad id", o: Options{Lower: lower, ID: "../x", Config: manifest.Config{Cmd: []string{"/probe"}}}, wantErr: ErrBadOptions},
		{name: "state dir not empty", o: Options{Lower: lower, StateDir: full, Config: manifest.Config{Cmd: []string{"/probe"}}}, wantErr: ErrBadOptions},
		{name: "no command", o: Options{Lower: lower}, wantErr: ErrNoCommand},
		{name: "unknown user", o: Options{Lower: lower, Config: manifest.Config{Cmd: []string{"/probe"}, User: "ghost"}}, wantErr: ErrUserNotFound},
		{name: "missing executable", o: Options{Lower: lower, Config: manifest.Config{Cmd: []string{"/nope"}}}, wantMsg: "creating container"},
		{name: "missing runtime", o: Options{Lower: lower, Runtime: "/nonexistent/runc", Config: manifest.Config{Cmd: []string{"/probe"}}}, wantMsg: "creating container"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			if o.StateDir == "" {
				o.StateDir = filepath.Join(t.TempDir(), "state")
			}
			if o.ID == "" {
				o.ID = fmt.Sprintf("lode-test-%d", time.Now().UnixNano())
			}
			o.Log = testLogger(t)
			var stderr bytes.Buffer
			o.Stderr = &stderr
			_, err := Run(context.Background(), o)
			if err == nil {
				t.Fatalf("Run succeeded, want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Run error = %v, want %v", err, tc.wantErr)
			}
			if testing.Verbose() {
				t.Logf("Run error: %v", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Run error = %q, want it to contain %q", err, tc.wantMsg)
			}
			if o.StateDir != full {
				checkClean(t, o.StateDir, o.ID, false)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(full, "x")); err != nil {
		t.Errorf("a non-empty state dir given by the caller was touched: %v", err)
	}
}

// BenchmarkRunTrue measures a whole run of a process that exits at once,
// reporting the mean time to first exec and total.
func BenchmarkRunTrue(b *testing.B) {
	requireRunc(b)
	lower := makeRootfs(b)
	b.ReportAllocs()
	var first, total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := Run(context.Background(), Options{
			Lower: lower, StateDir: filepath.Join(b.TempDir(), "state"),
			Config:  manifest.Config{Entrypoint: []string{"/probe"}},
			Network: NetworkNone,
		})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("Run = %+v, %v", res, err)
		}
		first += res.FirstExec
		total += res.Total
	}
	b.ReportMetric(float64(first.Microseconds())/float64(b.N)/1000, "firstexec-ms/op")
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "total-ms/op")
}

// TestRunTTYNeedsTerminal: TTY mode relays the caller's controlling
// terminal; without one (as under go test) Run says so and leaves nothing.
func TestRunTTYNeedsTerminal(t *testing.T) {
	requireRunc(t)
	lodetest.Require(t, func() error {
		f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			return nil // no controlling terminal: the case this test covers
		}
		f.Close()
		return errors.New("test process has a controlling terminal; this test covers its absence")
	})
	lower := makeRootfs(t)
	state := filepath.Join(t.TempDir(), "state")
	id := fmt.Sprintf("lode-test-%d", time.Now().UnixNano())
	_, err := Run(context.Background(), Options{
		Lower: lower, StateDir: state, ID: id, TTY: true,
		Config:  manifest.Config{Entrypoint: []string{"/probe"}},
		Network: NetworkNone, Log: testLogger(t),
	})
	if !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), "controlling terminal") {
		t.Errorf("Run(TTY) without a terminal = %v, want ErrBadOptions naming the controlling terminal", err)
	}
	checkClean(t, state, id, false)
}
