package metrics

import (
	"os"
	"path/filepath"
	"runtime/pprof"
	"testing"
)

func TestStartProfiles(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name       string
		cpu, trace string
		wantErr    bool
	}{
		{"both", filepath.Join(dir, "cpu"), filepath.Join(dir, "trace"), false},
		{"cpu only", filepath.Join(dir, "cpu2"), "", false},
		{"trace only", "", filepath.Join(dir, "trace2"), false},
		{"none", "", "", false},
		{"cpu path unwritable", filepath.Join(dir, "no", "cpu"), filepath.Join(dir, "trace3"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop, err := StartProfiles(tc.cpu, tc.trace)
			if (err != nil) != tc.wantErr {
				t.Fatalf("StartProfiles: %v, want error %v", err, tc.wantErr)
			}
			x := 0
			for i := 0; i < 1e6; i++ {
				x += i
			}
			_ = x
			stop()
			stop()
			if tc.wantErr {
				// Nothing is left running: a CPU profile can start again.
				if err := pprof.StartCPUProfile(new(discard)); err != nil {
					t.Fatalf("after a failed start a CPU profile is still running: %v", err)
				}
				pprof.StopCPUProfile()
				return
			}
			for _, p := range []string{tc.cpu, tc.trace} {
				if p == "" {
					continue
				}
				if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
					t.Errorf("%s after stop: %v (size %v)", p, err, fi)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
