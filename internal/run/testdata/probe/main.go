// Command probe is the test program of package run: it runs as a
// container's process and reports what it sees as JSON on stdout.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

type report struct {
	Args     []string
	Env      []string
	Cwd      string
	UID, GID int
	Groups   []int
	Hostname string
}

func main() {
	var r report
	r.Args = os.Args
	r.Env = os.Environ()
	r.Cwd, _ = os.Getwd()
	r.UID, r.GID = os.Getuid(), os.Getgid()
	r.Groups, _ = os.Getgroups()
	r.Hostname, _ = os.Hostname()
	if p := os.Getenv("PROBE_WRITE"); p != "" {
		if err := os.WriteFile(p, []byte("written by probe\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(99)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		os.Exit(98)
	}
	fmt.Fprintln(os.Stderr, "probe: to stderr")
	if d, err := time.ParseDuration(os.Getenv("PROBE_SLEEP")); err == nil {
		// PROBE_IGNORE_TERM=1 ignores SIGTERM (so only SIGKILL ends it);
		// otherwise SIGTERM exits 42.
		if os.Getenv("PROBE_IGNORE_TERM") == "1" {
			signal.Ignore(syscall.SIGTERM)
		} else {
			c := make(chan os.Signal, 1)
			signal.Notify(c, syscall.SIGTERM)
			go func() { <-c; os.Exit(42) }()
		}
		fmt.Println("sleeping")
		time.Sleep(d)
	}
	code, _ := strconv.Atoi(os.Getenv("PROBE_EXIT"))
	os.Exit(code)
}
