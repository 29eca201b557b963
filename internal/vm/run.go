package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	// ErrGuestInit: the guest's init could not set up the root (the
	// error names the step); the command did not run.
	ErrGuestInit = errors.New("guest init failed")
	// ErrNoExitStatus: the VM ended without reporting the command's exit
	// status (a kernel panic, a crash of QEMU, a kill).
	ErrNoExitStatus = errors.New("the VM ended without an exit status")
)

// Result is what a boot reported. Host times are since QEMU started;
// guest times are the guest kernel's uptime.
type Result struct {
	// ExitCode is the command's exit status (128+N for signal N).
	ExitCode int
	// Init, Start and Exit are when the init's status lines arrived:
	// the init started, the command started, the command exited.
	Init, Start, Exit time.Duration
	// Total is when QEMU ended.
	Total time.Duration
	// GuestInit, GuestStart and GuestExit are the guest's uptimes at
	// the same points.
	GuestInit, GuestStart, GuestExit time.Duration
}

// exitGrace is how long QEMU may take to end once the command's status is
// in before it is killed.
const exitGrace = 10 * time.Second

// Run boots m, writes the command's console output to out (every console
// line if m.Verbose) and returns when QEMU ends. The command's stdout and
// stderr share the serial console, so they arrive merged and with the
// tty's line endings undone. Cancelling ctx kills QEMU.
func Run(ctx context.Context, m Machine, out io.Writer) (Result, error) {
	m = m.withDefaults()
	if m.Marker == "" {
		return Result{}, errors.New("booting the VM: no marker (see NewMarker)")
	}
	if m.TSCKHz == 0 {
		khz, err := HostTSCKHz(ctx)
		if err != nil {
			return Result{}, err
		}
		m.TSCKHz = khz
	}
	var (
		mu    sync.Mutex
		res   Result
		got   = map[eventKind]bool{}
		fail  string
		kill  *time.Timer
		start time.Time
	)
	cmd := exec.CommandContext(ctx, m.QEMU, m.Args()...)
	con := newConsole(m.Marker, m.Verbose, out, func(ev event) {
		mu.Lock()
		defer mu.Unlock()
		at := time.Since(start)
		got[ev.kind] = true
		switch ev.kind {
		case evInit:
			res.Init, res.GuestInit = at, ev.uptime
		case evStart:
			res.Start, res.GuestStart = at, ev.uptime
		case evExit:
			res.Exit, res.GuestExit, res.ExitCode = at, ev.uptime, ev.status
		case evError:
			fail = ev.msg
		}
		if (ev.kind == evExit || ev.kind == evError) && kill == nil {
			kill = time.AfterFunc(exitGrace, func() { cmd.Process.Signal(syscall.SIGKILL) })
		}
	})
	var qerr bytes.Buffer
	cmd.Stdout = con
	cmd.Stderr = &limitedBuffer{b: &qerr, max: 16 << 10}
	cmd.WaitDelay = 5 * time.Second
	start = time.Now()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("starting %s: %w", m.QEMU, err)
	}
	werr := cmd.Wait()
	con.Flush()
	mu.Lock()
	defer mu.Unlock()
	if kill != nil {
		kill.Stop()
	}
	res.Total = time.Since(start)
	if got[evExit] {
		return res, nil
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("booting the VM: %w", ctx.Err())
	}
	detail := describe(werr, qerr.String(), con.Tail())
	if fail != "" {
		return res, fmt.Errorf("booting the VM: %w: %s%s", ErrGuestInit, fail, detail)
	}
	return res, fmt.Errorf("booting the VM: %w%s", ErrNoExitStatus, detail)
}

// describe summarizes how QEMU ended, for an error message.
func describe(werr error, qemuStderr string, tail []string) string {
	var b strings.Builder
	if werr != nil {
		fmt.Fprintf(&b, "; qemu: %v", werr)
	}
	if s := strings.TrimSpace(qemuStderr); s != "" {
		fmt.Fprintf(&b, "; qemu said: %s", s)
	}
	if len(tail) > 0 {
		fmt.Fprintf(&b, "\nlast console lines:\n  %s", strings.Join(tail, "\n  "))
	}
	return b.String()
}

// limitedBuffer keeps the first max bytes written and drops the rest.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
