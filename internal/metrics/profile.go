package metrics

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// StartProfiles starts the process's Go CPU profile (go tool pprof) into
// cpuPath and its execution trace (go tool trace) into tracePath; an empty
// path leaves that one off. stop ends both and closes their files; it is
// safe to call more than once. On an error nothing is left running.
func StartProfiles(cpuPath, tracePath string) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
		stops = nil
	}
	start := func(path, what string, begin func(io.Writer) error, end func()) error {
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("writing the %s: %w", what, err)
		}
		if err := begin(f); err != nil {
			f.Close()
			return fmt.Errorf("starting the %s %s: %w", what, path, err)
		}
		stops = append(stops, func() { end(); f.Close() })
		return nil
	}
	if err := start(tracePath, "execution trace", trace.Start, trace.Stop); err != nil {
		return func() {}, err
	}
	if err := start(cpuPath, "CPU profile", pprof.StartCPUProfile, pprof.StopCPUProfile); err != nil {
		stop()
		return func() {}, err
	}
	return stop, nil
}
