package lodetest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// A Requirement is something a test needs from the machine.
type Requirement func() error

// Root requires uid 0.
func Root() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (euid is %d)", os.Geteuid())
	}
	return nil
}

// FUSE requires a usable /dev/fuse.
func FUSE() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("needs /dev/fuse: %w", err)
	}
	f.Close()
	return nil
}

// Loop requires loop devices (losetup and /dev/loop-control).
func Loop() error {
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("needs loop devices: %w", err)
	}
	return Tool("losetup")()
}

// Tool requires an executable on PATH.
func Tool(name string) Requirement {
	return func() error {
		if _, err := exec.LookPath(name); err != nil {
			return fmt.Errorf("needs %s on PATH: %w", name, err)
		}
		return nil
	}
}

// NoSkip reports whether skips are forbidden (LODE_TEST_NO_SKIP=1, set by CI).
func NoSkip() bool { return os.Getenv("LODE_TEST_NO_SKIP") == "1" }

// Require skips t, naming the reason, unless every requirement holds. Under
// LODE_TEST_NO_SKIP=1 it fails t instead, so CI cannot pass by skipping.
func Require(t testing.TB, reqs ...Requirement) {
	t.Helper()
	for _, r := range reqs {
		if err := r(); err != nil {
			if NoSkip() {
				t.Fatalf("LODE_TEST_NO_SKIP=1 but %v", err)
			}
			t.Skip(err)
		}
	}
}

// Holds turns a check the test already ran into a Requirement: it fails
// with err (for example, no kernel found) and holds when err is nil.
func Holds(err error) Requirement { return func() error { return err } }
