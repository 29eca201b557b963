package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/run"
	"github.com/lode-dev/lode/internal/worker"
)

// takeoverAgentSpec tells TestTakeoverHelperAgent which agent to run.
type takeoverAgentSpec struct {
	Home, Socket, StateDir, CacheDir string
	AfterTakeover                    string
}

// TestTakeoverHelperAgent is not a test: TestAgentTakeoverWhileReading
// re-executes the test binary with LODE_TAKEOVER_AGENT=JSON to run
// "lode agent" as a process of its own. It prints "agent ready" once the
// socket serves and "agent exited: ERR" when runAgentDaemon returns, and
// exits 0 if that was nil.
func TestTakeoverHelperAgent(t *testing.T) {
	spec := os.Getenv("LODE_TAKEOVER_AGENT")
	if spec == "" {
		return
	}
	var s takeoverAgentSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		t.Fatal(err)
	}
	global = globalOptions{home: s.Home, tenant: "default"}
	stdout, stderr = os.Stdout, os.Stderr
	logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	o := agentOptions{d: worker.DaemonConfig{Socket: s.Socket, StateDir: s.StateDir, Takeover: true, AfterTakeover: s.AfterTakeover, Worker: worker.Options{
		CacheDir: s.CacheDir, DiskBytes: 256 << 20, MemBytes: 64 << 20, FetchTimeout: 20 * time.Second, ReadAhead: 4, Fetches: 8,
		AllowStoreSecret: true,
	}}}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ready := make(chan struct{})
	go func() {
		<-ready
		fmt.Println("agent ready")
	}()
	err := runAgent(ctx, o, ready)
	fmt.Printf("agent exited: %v\n", err)
	if err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// agentProc is a "lode agent" process started by startAgentProc.
type agentProc struct {
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{} // closed when the process has exited, with err set
	exitErr error
}

func startAgentProc(t *testing.T, spec takeoverAgentSpec) *agentProc {
	t.Helper()
	b, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^TestTakeoverHelperAgent$")
	cmd.Env = append(os.Environ(), "LODE_TAKEOVER_AGENT="+string(b))
	p := &agentProc{cmd: cmd, log: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		said := false
		for sc.Scan() {
			fmt.Fprintln(p.log, "stdout:", sc.Text())
			if sc.Text() == "agent ready" && !said {
				said = true
				ready <- true
			}
		}
		if !said {
			ready <- false
		}
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
		if strings.Contains(p.log.String(), "DATA RACE") {
			t.Errorf("the agent process (pid %d) reported a data race", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("agent pid %d log:\n%s", cmd.Process.Pid, p.log.String())
		}
	})
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("lode agent exited before serving:\n%s", p.log.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("lode agent did not serve within 60 s:\n%s", p.log.String())
	}
	return p
}

// TestAgentTakeoverWhileReading (issue #9): "lode agent" runs as its own
// process and mounts the sample; a reader process reads two files of the
// mount with O_DIRECT (every read reaches the FUSE server) in a loop and
// hashes each read; a second "lode agent" takes the first one over, which
// exits 0 without unmounting. The reader sees no error and the right bytes
// before, during and after; the new agent owns the mount (state.json) and
// restarts the NBD export; unmounting through it leaves no mount, FUSE
// mount or loop device. With --after-takeover=wait the old agent instead
// waits, and the SIGTERM it then gets (a replaced pod's) unmounts nothing.
func TestAgentTakeoverWhileReading(t *testing.T) {
	for _, tc := range []struct{ after, reader string }{{"exit", "shell"}, {"wait", "shell"}, {"exit", "container"}} {
		t.Run(tc.after+"/"+tc.reader, func(t *testing.T) { testAgentTakeover(t, tc.after, tc.reader) })
	}
}

// containerReader is the container's reader loop (python3 of the sample):
// whole-file O_DIRECT reads through overlayfs, ext4, the loop device and
// FUSE, each file's SHA-256 printed as "NAME HASH" (or "NAME error …").
const containerReader = `
import hashlib, mmap, os, sys
buf = mmap.mmap(-1, 1 << 20)
while True:
    for f in sys.argv[1:]:
        try:
            fd = os.open("/" + f, os.O_RDONLY | os.O_DIRECT)
            h = hashlib.sha256()
            while True:
                n = os.readv(fd, [buf])
                if n == 0:
                    break
                h.update(buf[:n])
            os.close(fd)
            print(f, h.hexdigest(), flush=True)
        except OSError as e:
            print(f, "error", e, flush=True)
`

func testAgentTakeover(t *testing.T, after, readerKind string) {
	requireMount(t)
	if readerKind == "container" {
		lodetest.Require(t, lodetest.Tool("runc"))
	}
	start := time.Now()
	c := newCLI(t)
	c.buildSample(t)
	root := oracle(t)
	files := []string{"data/model.bin", "etc/os-release"}
	want := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		want[f] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	spec := takeoverAgentSpec{Home: c.home, Socket: filepath.Join(c.home, "run", "agent.sock"),
		StateDir: filepath.Join(c.home, "mounts"), CacheDir: filepath.Join(c.home, "cache"), AfterTakeover: after}
	t.Cleanup(func() { fuse.Recover(context.Background(), spec.StateDir) })
	t.Logf("%v: sample ready", time.Since(start))
	a := startAgentProc(t, spec)
	t.Logf("%v: first agent serving", time.Since(start))
	client := worker.NewClient(spec.Socket)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "mnt")
	ms, err := client.Mount(ctx, worker.MountRequest{Image: "demo", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	nbdSock := filepath.Join(c.home, "run", "nbd.sock")
	if _, err := client.Export(ctx, worker.ExportRequest{Image: "demo", Listen: "unix:" + nbdSock}); err != nil {
		t.Fatal(err)
	}

	// The reader: a shell loop of dd iflag=direct | sha256sum, or a runc
	// container on the mount reading the same files in a loop.
	stopFile := filepath.Join(t.TempDir(), "stop")
	readerErr := &syncBuffer{}
	var rout io.Reader
	var stopReader, killReader func()
	switch readerKind {
	case "container":
		pr, pw := io.Pipe()
		rctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err := run.Run(rctx, run.Options{
				Lower: dir, Entrypoint: []string{"/usr/bin/python3"}, Args: append([]string{"-c", containerReader}, files...),
				Stdout: pw, Stderr: readerErr, KillGrace: time.Second,
			})
			if rctx.Err() != nil {
				err = nil // stopped by the test
			}
			pw.CloseWithError(err)
		}()
		rout = pr
		stopReader = cancel
		killReader = func() { cancel(); <-done }
	default:
		script := `while [ ! -e "$STOP" ]; do for f in ` + strings.Join(files, " ") + `; do
  h=$(dd if="$DIR/$f" iflag=direct bs=1M status=none | sha256sum) || h=error
  echo "$f ${h%% *}"
done; done`
		reader := exec.Command("bash", "-o", "pipefail", "-c", script)
		reader.Env = append(os.Environ(), "DIR="+dir, "STOP="+stopFile)
		reader.Stderr = readerErr
		out, err := reader.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := reader.Start(); err != nil {
			t.Fatal(err)
		}
		rout = out
		stopReader = func() { os.WriteFile(stopFile, nil, 0o644) }
		killReader = func() { reader.Process.Kill(); reader.Wait() }
	}
	var (
		mu         sync.Mutex
		reads, bad int
		firstBad   string
		last       time.Time
		maxGap     time.Duration
	)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		sc := bufio.NewScanner(rout)
		for sc.Scan() {
			f, h, _ := strings.Cut(sc.Text(), " ")
			mu.Lock()
			if now := time.Now(); !last.IsZero() && now.Sub(last) > maxGap {
				maxGap = now.Sub(last)
			}
			last = time.Now()
			reads++
			if want[f] == "" || h != want[f] {
				bad++
				if firstBad == "" {
					firstBad = sc.Text()
				}
			}
			mu.Unlock()
		}
	}()
	defer func() {
		stopReader()
		select {
		case <-readerDone:
		case <-time.After(30 * time.Second):
		}
		killReader()
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return reads }
	waitFor(t, "the reader's first reads", nil, func() bool { return count() >= 6 })

	// The takeover.
	before := count()
	t.Logf("%v: reader going", time.Since(start))
	b := startAgentProc(t, spec)
	t.Logf("%v: second agent serving", time.Since(start))
	if after == "wait" {
		waitFor(t, "the old agent to wait", nil, func() bool { return strings.Contains(a.log.String(), "waiting for a signal") })
		a.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-a.exited:
		if a.exitErr != nil {
			t.Errorf("the old agent exited with %v, want 0", a.exitErr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the old agent did not exit after the takeover")
	}
	if !strings.Contains(a.log.String(), "agent exited: <nil>") {
		t.Errorf("the old agent's last words:\n%s", a.log.String())
	}
	if !isMounted(t, dir) {
		t.Fatalf("%s is not mounted after the takeover", dir)
	}
	waitFor(t, "reads after the takeover", nil, func() bool { return count() >= before+20 })
	t.Logf("%v: reads after the takeover done", time.Since(start))
	stopReader()
	select {
	case <-readerDone:
	case <-time.After(60 * time.Second):
		t.Fatal("the reader did not stop")
	}
	mu.Lock()
	if bad != 0 || reads < before+20 {
		t.Errorf("reader: %d reads, %d wrong (first %q); stderr:\n%s", reads, bad, firstBad, readerErr.String())
	}
	if s := readerErr.String(); s != "" {
		t.Errorf("the reader reported errors:\n%s", s)
	}
	t.Logf("%s: %d whole-file O_DIRECT reads, %d before the takeover, none wrong; longest gap between two reads %v", readerKind, reads, before, maxGap)
	mu.Unlock()

	// The new agent serves the mount and the export, and owns the state.
	st, err := client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := mountFor(st, dir)
	if !ok || m.Image != "demo" || m.Tenant != "default" || m.Loop != ms.Loop || m.Manifest != ms.Manifest {
		t.Errorf("the new agent's mounts = %+v, want demo at %s on %s", st.Mounts, dir, ms.Loop)
	}
	if len(st.Exports) != 1 || st.Exports[0].Listen != "unix:"+nbdSock || !fileIsSocket(nbdSock) {
		t.Errorf("the new agent's exports = %+v (socket present: %v)", st.Exports, fileIsSocket(nbdSock))
	}
	states, _ := filepath.Glob(filepath.Join(spec.StateDir, "*", "state.json"))
	if len(states) != 1 {
		t.Fatalf("state files %v, want 1", states)
	}
	var rec struct{ PID int }
	readJSON(t, states[0], &rec)
	if rec.PID != b.cmd.Process.Pid {
		t.Errorf("state.json names pid %d, want the new agent's %d", rec.PID, b.cmd.Process.Pid)
	}

	// Unmounting through the new agent leaves nothing behind.
	if _, err := client.Unmount(ctx, dir); err != nil {
		t.Fatalf("unmounting through the new agent: %v", err)
	}
	if left := lodeMountsUnder(t, dir, spec.StateDir); len(left) != 0 {
		t.Errorf("mounts left after umount: %v", left)
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if bf, err := os.ReadFile(l); err == nil && strings.HasPrefix(string(bf), spec.StateDir) {
			t.Errorf("loop device %s still backed by %s", l, strings.TrimSpace(string(bf)))
		}
	}
}
