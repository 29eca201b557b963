package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// maxInitBytes bounds what one lode package may allocate at init. Every
// lode command pays every linked package's init before it does anything
// (issue #21: a process start is a large part of a local cold start), so
// tables and regexps are built on first use instead.
const maxInitBytes = 8 << 10

// testOnly are the test helpers this binary links and lode does not.
var testOnly = map[string]bool{
	"github.com/lode-dev/lode/internal/lodetest":  true,
	"github.com/lode-dev/lode/internal/imagetest": true,
}

// TestPackageInitIsLight runs this test binary (which links every package
// lode does) with GODEBUG=inittrace=1 and checks each lode package's init.
func TestPackageInitIsLight(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.Bytes())
	}
	seen := 0
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		// init PKG @T ms, C ms clock, B bytes, A allocs
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[0] != "init" || !strings.HasPrefix(f[1], "github.com/lode-dev/lode/") || testOnly[f[1]] {
			continue
		}
		seen++
		b, err := strconv.Atoi(f[7])
		if err != nil {
			t.Fatalf("parsing %q: %v", sc.Text(), err)
		}
		if b > maxInitBytes {
			t.Errorf("package %s allocates %d bytes at init (%s allocs), want <= %d: build it on first use", f[1], b, f[9], maxInitBytes)
		}
	}
	if seen == 0 {
		t.Fatalf("no init lines of lode packages in the trace:\n%s", stderr.Bytes())
	}
}
