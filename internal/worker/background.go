package worker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// MountInBackground runs this program again with args (lode mount without
// --background) as a detached process (its own session) and returns once it
// prints a line starting with mounted — echoed to out with the server's pid
// and log file (in logDir) — or fails with the tail of its log.
func MountInBackground(args []string, logDir, name, dir, mounted string, out io.Writer) error {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(logDir, "mount-"+strings.ReplaceAll(strings.Trim(dir, "/"), "/", "_")+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout = pw
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting background mount: %w", err)
	}
	pw.Close()
	line, err := bufio.NewReader(pr).ReadString('\n')
	pr.Close()
	if strings.HasPrefix(line, mounted) {
		fmt.Fprint(out, line)
		fmt.Fprintf(out, "serving from pid %d; logs in %s\n", cmd.Process.Pid, logPath)
		return cmd.Process.Release()
	}
	werr := cmd.Wait()
	b, _ := os.ReadFile(logPath)
	tail := string(b)
	if len(tail) > 2000 {
		tail = tail[len(tail)-2000:]
	}
	return errors.Join(fmt.Errorf("background mount of %s at %s failed (%v, %v); log %s:\n%s", name, dir, err, werr, logPath, tail))
}
