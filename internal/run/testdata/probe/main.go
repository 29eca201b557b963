// Command probe is the test program of package run: it runs as a
// container's process and reports what it sees as JSON on stdout.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
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
	code, _ := strconv.Atoi(os.Getenv("PROBE_EXIT"))
	os.Exit(code)
}
