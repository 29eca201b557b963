package run

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/manifest"
)

// Options says what to run and how. The zero value of every field but Lower
// and a command (from Config or Args/Entrypoint) has a working default.
type Options struct {
	// Lower is the mounted, read-only image root (the overlay's lowerdir).
	Lower string
	// StateDir holds the bundle: config.json, upper/, work/ and the merged
	// rootfs/. It must be on a local filesystem that overlayfs accepts as an
	// upper dir, and must not exist or be empty. Default: a new directory
	// under os.TempDir(). It is removed after the run unless Keep.
	StateDir string
	// Keep leaves StateDir (and the container's writes in upper/) in place.
	// The overlay is unmounted and the runtime's state deleted regardless.
	Keep bool
	// Config is the image's config: entrypoint, cmd, env, working dir, user.
	Config manifest.Config
	// Args, when non-empty, replace the image's Cmd (docker run IMAGE ARGS).
	Args []string
	// Entrypoint, when non-nil, replaces the image's Entrypoint and drops its
	// Cmd (docker run --entrypoint); an empty non-nil slice clears both.
	Entrypoint []string
	// Env holds extra KEY=VAL entries that override the image's env.
	Env []string
	// Runtime is the OCI runtime binary, a name on PATH or a path. Default
	// "runc" (crun takes the same create/start/kill/delete commands).
	Runtime string
	// Stdin, Stdout and Stderr are the container's stdio. nil Stdin reads
	// /dev/null; nil Stdout or Stderr discard. *os.File values are handed to
	// the container as they are; other readers and writers are copied
	// through pipes (Run returns only after the container's output is
	// drained; a Stdin copy blocked in Read is abandoned).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// TTY gives the container a terminal: the runtime runs in the
	// foreground (runc run) and relays a pty from the caller's controlling
	// terminal, which must exist (ErrBadOptions otherwise); Stdin and Stdout
	// should be that terminal. FirstExec and Started are not measured in
	// this mode.
	TTY bool
	// ID is the container id. Default "lode-" + 12 random hex digits.
	ID string
	// Hostname of the container's UTS namespace. Default: the host's name
	// with the host network (so /etc/hosts, which is shared, agrees), the
	// container ID otherwise.
	Hostname string
	// Network is NetworkHost (default) or NetworkNone.
	Network string
	// KillGrace is how long Run waits after SIGTERM, when ctx is cancelled,
	// before SIGKILL. Default 10 s (docker stop's default).
	KillGrace time.Duration
	// Log receives progress at debug level and cleanup failures at warn.
	// Default: discard.
	Log *slog.Logger
	// Now is the clock for Result's times. Default time.Now.
	Now func() time.Time
}

// Result describes a finished container.
type Result struct {
	// ExitCode is the container process's exit status, 128+n when killed by
	// signal n. A non-zero code is not an error of Run.
	ExitCode int
	// Started is when the runtime reported the process started: `runc start`
	// returned, i.e. the container's init was released from its exec fifo to
	// exec the user process. Zero in TTY mode.
	Started time.Time
	// FirstExec is from the Run call to Started: state dir, overlay mount,
	// config, `runc create` (namespaces, mounts, pivot_root) and
	// `runc start`. Zero in TTY mode.
	FirstExec time.Duration
	// Total is from the Run call to the container's exit, cleanup excluded.
	Total time.Duration
}

// idRE is compiled on first use, not at package init: its {0,127} expands
// to a program of 128 repetitions, 1,700 allocations that every lode
// command paid at start (TestPackageInitIsLight in cmd/lode).
var idRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`) })

const defaultKillGrace = 10 * time.Second

func (o *Options) setDefaults() error {
	var errs []error
	if o.Lower == "" {
		errs = append(errs, errors.New("Lower is empty"))
	} else if fi, err := os.Stat(o.Lower); err != nil || !fi.IsDir() {
		errs = append(errs, fmt.Errorf("Lower %s is not a directory", o.Lower))
	}
	if o.Runtime == "" {
		o.Runtime = "runc"
	}
	if o.ID == "" {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("making container id: %w", err)
		}
		o.ID = "lode-" + hex.EncodeToString(b[:])
	} else if !idRE().MatchString(o.ID) {
		errs = append(errs, fmt.Errorf("container id %q is not [A-Za-z0-9][A-Za-z0-9_.-]*", o.ID))
	}
	if o.Network == "" {
		o.Network = NetworkHost
	}
	if o.Network != NetworkHost && o.Network != NetworkNone {
		errs = append(errs, fmt.Errorf("network %q is not %q or %q", o.Network, NetworkHost, NetworkNone))
	}
	if o.Hostname == "" {
		o.Hostname = o.ID
		if o.Network == NetworkHost {
			if h, err := os.Hostname(); err == nil {
				o.Hostname = h
			}
		}
	}
	if o.KillGrace <= 0 {
		o.KillGrace = defaultKillGrace
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrBadOptions, errors.Join(errs...))
	}
	return nil
}

// Run starts o's image as a container and waits for it to exit. The
// container's exit status is in Result (non-zero is not an error); errors
// are setup failures and name the step. Cancelling ctx sends SIGTERM to the
// container, then SIGKILL after o.KillGrace; Run then returns the result and
// ctx's error. On every path the container is deleted from the runtime, the
// overlay unmounted and StateDir removed (unless o.Keep).
func Run(ctx context.Context, o Options) (res Result, err error) {
	if err := o.setDefaults(); err != nil {
		return Result{}, err
	}
	start := o.Now()
	log := o.Log.With(slog.String("component", "run"), slog.String("container", o.ID))

	var cl cleanup
	defer func() {
		if cerr := cl.run(log); cerr != nil && err == nil {
			err = cerr
		}
	}()

	// Bundle: state dir, overlay, config.json.
	if o.StateDir == "" {
		d, err := os.MkdirTemp("", "lode-run-")
		if err != nil {
			return Result{}, fmt.Errorf("creating state dir: %w", err)
		}
		o.StateDir = d
	} else {
		if ents, err := os.ReadDir(o.StateDir); err == nil && len(ents) > 0 {
			return Result{}, fmt.Errorf("%w: state dir %s is not empty", ErrBadOptions, o.StateDir)
		}
		if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
			return Result{}, fmt.Errorf("creating state dir %s: %w", o.StateDir, err)
		}
	}
	if abs, err := filepath.Abs(o.StateDir); err == nil {
		o.StateDir = abs
	}
	if !o.Keep {
		dir := o.StateDir
		cl.add("removing state dir "+dir, func() error { return os.RemoveAll(dir) })
	}
	rootfs, err := mountOverlay(o.Lower, o.StateDir)
	if err != nil {
		return Result{}, err
	}
	cl.add("unmounting overlay "+rootfs, func() error { return unmount(rootfs) })

	spec, err := Spec(o, rootfs)
	if err != nil {
		return Result{}, fmt.Errorf("making runtime config for %s: %w", o.ID, err)
	}
	b, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return Result{}, fmt.Errorf("encoding runtime config for %s: %w", o.ID, err)
	}
	if err := os.WriteFile(filepath.Join(o.StateDir, "config.json"), b, 0o600); err != nil {
		return Result{}, fmt.Errorf("writing runtime config for %s: %w", o.ID, err)
	}
	log.Debug("bundle ready", slog.String("bundle", o.StateDir), slog.Any("args", spec.Process.Args))

	rt := &runtime{bin: o.Runtime, logFile: filepath.Join(o.StateDir, "runtime.log"), id: o.ID}
	// Registered before create so that a create that fails half-way, or a
	// cancelled one, leaves nothing behind. Runs before the unmount.
	cl.add("deleting container "+o.ID, func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return rt.cmd(dctx, nil, "delete", "--force", o.ID)
	})

	if o.TTY {
		return runTTY(ctx, o, rt, start, log)
	}
	return runDetached(ctx, o, rt, start, log)
}

// runDetached runs the container through `runtime create` and `runtime start`
// and collects the init process's status as its subreaper.
func runDetached(ctx context.Context, o Options, rt *runtime, start time.Time, log *slog.Logger) (Result, error) {
	if err := becomeSubreaper(); err != nil {
		return Result{}, err
	}
	sio, err := newStdio(o.Stdin, o.Stdout, o.Stderr)
	if err != nil {
		return Result{}, fmt.Errorf("setting up stdio of container %s: %w", o.ID, err)
	}
	defer sio.closeAll()

	pidFile := filepath.Join(o.StateDir, "init.pid")
	create := exec.CommandContext(ctx, rt.bin, rt.global("create", "--bundle", o.StateDir, "--pid-file", pidFile, o.ID)...)
	create.Stdin, create.Stdout, create.Stderr = sio.childIn, sio.childOut, sio.childErr
	create.WaitDelay = 5 * time.Second
	err = create.Run()
	sio.closeChildEnds()
	if err != nil {
		// A create that failed or was cancelled half-way may have left an
		// init behind, re-parented to us: reap it once delete kills it.
		if pid, perr := readPid(pidFile); perr == nil {
			go wait(pid)
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return Result{}, fmt.Errorf("creating container %s with %s: %w%s", o.ID, rt.bin, err, rt.logTail())
	}
	pid, err := readPid(pidFile)
	if err != nil {
		return Result{}, fmt.Errorf("reading init pid of container %s: %w", o.ID, err)
	}
	exited := make(chan waitResult, 1)
	go func() { exited <- wait(pid) }()
	// From here every return path must reap pid: the deferred delete kills
	// it, and the goroutine above reaps it.

	// Not cancelled with ctx: the process may already be running when
	// start returns, and a cancellation is handled below by stopping it.
	sctx, cancelStart := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	err = rt.cmd(sctx, nil, "start", o.ID)
	cancelStart()
	if err != nil {
		return Result{}, fmt.Errorf("starting container %s: %w", o.ID, err)
	}
	res := Result{Started: o.Now()}
	res.FirstExec = res.Started.Sub(start)
	log.Debug("container started", slog.Int("pid", pid), slog.Duration("first_exec", res.FirstExec))

	var w waitResult
	var ctxErr error
	select {
	case w = <-exited:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		w = stopContainer(o, rt, exited, log)
	}
	if w.err != nil {
		return res, fmt.Errorf("waiting for container %s (pid %d): %w", o.ID, pid, w.err)
	}
	res.ExitCode = w.code
	sio.drain()
	res.Total = o.Now().Sub(start)
	log.Debug("container exited", slog.Int("exit_code", res.ExitCode), slog.Duration("total", res.Total))
	if ctxErr != nil {
		return res, fmt.Errorf("running container %s: %w", o.ID, ctxErr)
	}
	return res, nil
}

// stopContainer sends SIGTERM, then SIGKILL after the grace period, and
// returns the init's status.
func stopContainer(o Options, rt *runtime, exited <-chan waitResult, log *slog.Logger) waitResult {
	kctx, cancel := context.WithTimeout(context.Background(), o.KillGrace+30*time.Second)
	defer cancel()
	log.Debug("stopping container", slog.String("signal", "TERM"))
	if err := rt.cmd(kctx, nil, "kill", o.ID, "TERM"); err != nil {
		log.Warn("signalling container", slog.String("signal", "TERM"), slog.Any("err", err))
	}
	t := time.NewTimer(o.KillGrace)
	defer t.Stop()
	select {
	case w := <-exited:
		return w
	case <-t.C:
	}
	log.Debug("stopping container", slog.String("signal", "KILL"))
	if err := rt.cmd(kctx, nil, "kill", "--all", o.ID, "KILL"); err != nil {
		log.Warn("signalling container", slog.String("signal", "KILL"), slog.Any("err", err))
	}
	return <-exited
}

// runTTY runs the container in the foreground with `runtime run`, which
// creates the terminal and relays it; the runtime's exit status is the
// container's.
func runTTY(ctx context.Context, o Options, rt *runtime, start time.Time, log *slog.Logger) (Result, error) {
	// runc relays the pty from its own controlling terminal (it opens
	// /dev/tty to follow window size), so one is needed.
	if tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0); err != nil {
		return Result{}, fmt.Errorf("%w: TTY needs a controlling terminal: %w", ErrBadOptions, err)
	} else {
		tty.Close()
	}
	cmd := exec.Command(rt.bin, rt.global("run", "--bundle", o.StateDir, o.ID)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("running container %s with %s: %w", o.ID, rt.bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var ctxErr, err error
	select {
	case err = <-done:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		_ = rt.cmd(context.Background(), nil, "kill", o.ID, "TERM")
		select {
		case err = <-done:
		case <-time.After(o.KillGrace):
			_ = rt.cmd(context.Background(), nil, "kill", "--all", o.ID, "KILL")
			err = <-done
		}
	}
	res := Result{Total: o.Now().Sub(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		// The runtime exits with the container's status, and also with 1
		// when it fails itself: its log tells which.
		if b, _ := os.ReadFile(rt.logFile); bytes.Contains(b, []byte("level=error")) {
			return res, fmt.Errorf("running container %s: %w%s", o.ID, err, rt.logTail())
		}
		res.ExitCode = ee.ExitCode()
	default:
		return res, fmt.Errorf("running container %s: %w%s", o.ID, err, rt.logTail())
	}
	log.Debug("container exited", slog.Int("exit_code", res.ExitCode))
	if ctxErr != nil {
		return res, fmt.Errorf("running container %s: %w", o.ID, ctxErr)
	}
	return res, nil
}

// runtime invokes the OCI runtime binary.
type runtime struct {
	bin, logFile, id string
}

func (r *runtime) global(args ...string) []string {
	return append([]string{"--log", r.logFile}, args...)
}

// cmd runs one short runtime command, returning its output in the error.
func (r *runtime) cmd(ctx context.Context, stdin io.Reader, args ...string) error {
	c := exec.CommandContext(ctx, r.bin, r.global(args...)...)
	c.Stdin = stdin
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", r.bin, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// logTail returns the end of the runtime's log, for error messages.
func (r *runtime) logTail() string {
	b, err := os.ReadFile(r.logFile)
	if err != nil || len(b) == 0 {
		return ""
	}
	b = bytes.TrimSpace(b)
	if len(b) > 1024 {
		b = b[len(b)-1024:]
	}
	return " (runtime log: " + string(b) + ")"
}

// cleanup runs registered steps in reverse order, all of them, and joins
// their errors.
type cleanup struct {
	steps []cleanupStep
}

type cleanupStep struct {
	what string
	fn   func() error
}

func (c *cleanup) add(what string, fn func() error) { c.steps = append(c.steps, cleanupStep{what, fn}) }

func (c *cleanup) run(log *slog.Logger) error {
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		s := c.steps[i]
		if err := s.fn(); err != nil {
			log.Warn("cleanup step failed", slog.String("step", s.what), slog.Any("err", err))
			errs = append(errs, fmt.Errorf("%s: %w", s.what, err))
		}
	}
	return errors.Join(errs...)
}

// mountOverlay mounts lower + stateDir/upper (work in stateDir/work) at
// stateDir/rootfs and returns that path.
func mountOverlay(lower, stateDir string) (string, error) {
	lower, err := filepath.Abs(lower)
	if err != nil {
		return "", fmt.Errorf("mounting overlay: %w", err)
	}
	upper := filepath.Join(stateDir, "upper")
	work := filepath.Join(stateDir, "work")
	merged := filepath.Join(stateDir, "rootfs")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", fmt.Errorf("mounting overlay: creating %s: %w", d, err)
		}
	}
	// overlayfs splits its options at "," and lowerdir at ":"; a path that
	// holds either is passed as /proc/self/fd/N of an O_PATH descriptor,
	// which the kernel resolves when it mounts.
	var opts []string
	for _, kv := range [][2]string{{"lowerdir", lower}, {"upperdir", upper}, {"workdir", work}} {
		p := kv[1]
		if strings.ContainsAny(p, ",:") {
			fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return "", fmt.Errorf("mounting overlay: opening %s: %w", p, err)
			}
			defer unix.Close(fd)
			p = "/proc/self/fd/" + strconv.Itoa(fd)
		}
		opts = append(opts, kv[0]+"="+p)
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, strings.Join(opts, ",")); err != nil {
		return "", fmt.Errorf("mounting overlay at %s (lowerdir %s): %w", merged, lower, err)
	}
	return merged, nil
}

func unmount(dir string) error {
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: not mounted
		return err
	}
	return nil
}

var subreaper struct {
	once sync.Once
	err  error
}

func becomeSubreaper() error {
	subreaper.once.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			subreaper.err = fmt.Errorf("becoming child subreaper: %w", err)
		}
	})
	return subreaper.err
}

type waitResult struct {
	code int
	err  error
}

// wait reaps pid and converts its status: exit code, or 128+signal.
func wait(pid int) waitResult {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return waitResult{err: err}
		}
		switch {
		case ws.Exited():
			return waitResult{code: ws.ExitStatus()}
		case ws.Signaled():
			return waitResult{code: 128 + int(ws.Signal())}
		}
	}
}

// stdio holds the container's stdio: the ends handed to the runtime (and so
// to the container) and the copiers on our side.
type stdio struct {
	childIn, childOut, childErr *os.File
	owned                       []*os.File // child ends we created, closed after create
	parentEnds                  []*os.File
	copies                      sync.WaitGroup
}

func newStdio(in io.Reader, out, errw io.Writer) (*stdio, error) {
	s := &stdio{}
	var err error
	if s.childIn, err = s.input(in); err != nil {
		s.closeAll()
		return nil, err
	}
	if s.childOut, err = s.output(out); err != nil {
		s.closeAll()
		return nil, err
	}
	if s.childErr, err = s.output(errw); err != nil {
		s.closeAll()
		return nil, err
	}
	return s, nil
}

func (s *stdio) input(r io.Reader) (*os.File, error) {
	if f, ok := r.(*os.File); ok {
		return f, nil
	}
	if r == nil {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		s.owned = append(s.owned, f)
		return f, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	s.owned = append(s.owned, pr)
	// Not waited for: Read on r may block past the container's life.
	go func() {
		_, _ = io.Copy(pw, r)
		pw.Close()
	}()
	return pr, nil
}

func (s *stdio) output(w io.Writer) (*os.File, error) {
	if f, ok := w.(*os.File); ok {
		return f, nil
	}
	if w == nil {
		w = io.Discard
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	s.owned = append(s.owned, pw)
	s.parentEnds = append(s.parentEnds, pr)
	s.copies.Add(1)
	go func() {
		defer s.copies.Done()
		_, _ = io.Copy(w, pr)
	}()
	return pw, nil
}

// closeChildEnds closes our copies of the ends the container holds, so the
// output copiers see EOF when the container's processes are gone.
func (s *stdio) closeChildEnds() {
	for _, f := range s.owned {
		f.Close()
	}
	s.owned = nil
}

// drain waits for the output copiers to reach EOF.
func (s *stdio) drain() { s.copies.Wait() }

func (s *stdio) closeAll() {
	s.closeChildEnds()
	for _, f := range s.parentEnds {
		f.Close()
	}
	s.parentEnds = nil
}

func readPid(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid %q in %s", b, file)
	}
	return pid, nil
}
