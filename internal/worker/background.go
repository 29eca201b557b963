package worker

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
)

// lode mount --background: the parent mounts in the foreground and hands
// the live mount (its /dev/fuse connection, fuse.ImageMount.HandOver) to a
// detached server it started first, so the server's process start runs
// beside the mount instead of after it (docs/coldstart.md, "The local
// limit"). Go cannot fork; before this the parent started the server and
// waited for it to mount, paying a second process start in series.

// adoptEnv names the descriptor on which a background server finds its
// connection to the parent (set by StartBackground, read by AdoptConn).
const adoptEnv = "LODE_MOUNT_ADOPT_FD"

// handoverWait bounds how long either side waits for the other.
const handoverWait = 2 * time.Minute

// Background is the server of a background mount, started and waiting for
// the mount.
type Background struct {
	cmd     *exec.Cmd
	pid     int
	conn    *net.UnixConn
	logPath string
	name    string
	dir     string
}

// StartBackground runs this program again with args (lode mount's command
// line) less --background as a detached process (its own session), logging
// to a file in logDir, with one end of a socket pair as the connection
// AdoptConn returns there.
func StartBackground(args []string, logDir, name, dir string) (*Background, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return startBackground(self, withoutBackground(args), logDir, name, dir)
}

// withoutBackground is args less the --background flag.
func withoutBackground(args []string) []string {
	var out []string
	for _, a := range args {
		if a != "--background" && a != "-d" && a != "--background=true" {
			out = append(out, a)
		}
	}
	return out
}

// ForParent is o for the parent of a background mount, which reads the
// image only to mount it: no disk cache, trace or profile learning (the
// server's).
func (o Options) ForParent() Options {
	o.DiskBytes, o.Trace, o.LearnProfile = 0, "", false
	return o
}

func startBackground(prog string, args []string, logDir, name, dir string) (*Background, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(logDir, "mount-"+strings.ReplaceAll(strings.Trim(dir, "/"), "/", "_")+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("background mount of %s: socket pair: %w", name, err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "handover"), os.NewFile(uintptr(fds[1]), "handover")
	defer theirs.Close()
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("background mount of %s: %w", name, err)
	}
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), adoptEnv+"=3")
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fc.Close()
		return nil, fmt.Errorf("starting background mount of %s: %w", name, err)
	}
	return &Background{cmd: cmd, pid: cmd.Process.Pid, conn: fc.(*net.UnixConn), logPath: logPath, name: name, dir: dir}, nil
}

// Pid is the server's process id.
func (b *Background) Pid() int { return b.pid }

// LogPath is the server's log file.
func (b *Background) LogPath() string { return b.logPath }

// Serve mounts w at dir in this process (FUSE + loop + ext4, without the
// prefetch and fill: they are the server's) and hands the mount to the
// server. On success the server serves it and this process may exit; on
// failure the mount is gone and the server stopped.
func (b *Background) Serve(ctx context.Context, w *Image, stateDir string) (*fuse.ImageMount, error) {
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return nil, b.Abort(fmt.Errorf("creating mount point: %w", err))
	}
	mo := fuse.MountOptions{StateDir: stateDir}
	mo.Log = w.log
	m, err := fuse.MountImage(ctx, b.dir, w.Image, mo)
	if err != nil {
		return nil, b.Abort(fmt.Errorf("mounting %s at %s: %w", w.Name, b.dir, err))
	}
	hctx, cancel := context.WithTimeout(ctx, handoverWait)
	defer cancel()
	if err := m.HandOver(hctx, b.conn, nil); err != nil {
		m.Close()
		return nil, b.Abort(err)
	}
	b.conn.Close()
	return m, b.cmd.Process.Release()
}

// Abort stops the server (if it still runs) and returns err with the tail
// of its log.
func (b *Background) Abort(err error) error {
	b.conn.Close() // the server's wait for the mount ends
	done := make(chan error, 1)
	go func() { done <- b.cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(5 * time.Second):
		b.cmd.Process.Kill()
		werr = <-done
	}
	tail, _ := os.ReadFile(b.logPath)
	if len(tail) > 2000 {
		tail = tail[len(tail)-2000:]
	}
	return fmt.Errorf("background mount of %s at %s failed (%w; server: %v); log %s:\n%s", b.name, b.dir, err, werr, b.logPath, tail)
}

// AdoptConn returns the connection to the parent when this process is the
// server of a background mount (StartBackground), else nil.
func AdoptConn() (*net.UnixConn, error) {
	v := os.Getenv(adoptEnv)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(adoptEnv) // not for the processes this one starts
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", adoptEnv, v)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s=%d: %w", adoptEnv, fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s=%d: not a unix socket", adoptEnv, fd)
	}
	return uc, nil
}

// MountOrAdopt is lode mount's mount: Mount, or AdoptMount when this
// process is the server of a background mount (AdoptConn).
func (w *Image) MountOrAdopt(ctx context.Context, dir, stateDir string, parallel int, fill FillOptions) (*fuse.ImageMount, error) {
	c, err := AdoptConn()
	if err != nil {
		return nil, err
	}
	if c != nil {
		return w.AdoptMount(ctx, c, stateDir, parallel, fill)
	}
	return w.Mount(ctx, dir, stateDir, parallel, fill)
}

// AdoptMount is the background server's side of lode mount: it starts the
// image's prefetch with parallel fetches while the parent mounts, adopts
// the mount the parent hands over on c, and starts the background fill.
func (w *Image) AdoptMount(ctx context.Context, c *net.UnixConn, stateDir string, parallel int, fill FillOptions) (*fuse.ImageMount, error) {
	defer c.Close()
	if err := fill.Check(); err != nil {
		return nil, err
	}
	w.Prefetch(ctx, parallel)
	rctx, cancel := context.WithTimeout(ctx, handoverWait)
	defer cancel()
	h, err := fuse.ReceiveHandover(rctx, c)
	if err != nil {
		return nil, fmt.Errorf("waiting for the mount of %s: %w", w.Name, err)
	}
	mo := fuse.MountOptions{StateDir: stateDir}
	mo.Log = w.log
	m, err := h.Adopt(w.Image, mo)
	if err != nil {
		return nil, err
	}
	w.Trace.Mark("mounted")
	fill.Start(ctx, w.Image, nil, w.log)
	return m, nil
}
