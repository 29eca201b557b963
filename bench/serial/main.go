// Command serial prints the serial chain of a fetch trace (lode run
// --trace FILE, internal/trace): the fetches a start paid for one after
// another, each with why it was asked for, when, how long it took and the
// gap since the previous one completed.
//
//	go run ./bench/serial [-until exit] [-json] TRACE
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/lode-dev/lode/internal/trace"
)

func main() {
	until := flag.String("until", "exit", "count fetches asked for before the first of these marks (comma-separated; none found: the whole trace)")
	asJSON := flag.Bool("json", false, "print {fetches, serial, blocking} as JSON instead of the report")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: serial [-until exit] [-json] TRACE")
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	evs, err := trace.Parse(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	a := trace.Analyze(evs, strings.Split(*until, ",")...)
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(map[string]any{"fetches": len(a.Fetches), "serial": len(a.Chain),
			"blocking": a.Blocking, "by_why": a.ByWhy, "until_us": a.UntilUS})
		return
	}
	if err := trace.WriteReport(os.Stdout, a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
