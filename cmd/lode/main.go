// Command lode starts containers from large images without downloading them
// first. See README.md and docs/ for the tour; every subcommand has --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// stdout and stderr are variables so tests can capture a command's output.
var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	stopProfiles() // cobra skips PersistentPostRun when the command fails
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(stderr, "lode:", err)
		os.Exit(1)
	}
}

// exitError carries a child's exit status through cobra (lode run).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
