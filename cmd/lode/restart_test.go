package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/lodetest"
)

// TestNBDClientSurvivesServerRestart (issue #9): a QEMU NBD client with
// reconnect-delay reads the export in a loop, the serving process is stopped
// and a new one started on the same unix socket while it reads, and every
// read succeeds (after a reconnect), every byte equal to the built image.
func TestNBDClientSurvivesServerRestart(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("qemu-io"))
	c := newCLI(t)
	logger = slog.New(slog.NewTextHandler(c.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	keep := c.buildSample(t)
	want, err := os.ReadFile(keep)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	serve := func() (stop func() error) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		// Count the serving lines before the server starts: counted after,
		// a fast start's line is in n and the wait never ends.
		n := strings.Count(c.stderr.String(), "as NBD export")
		go func() {
			errc <- runServeNBD(ctx, serveNBDOptions{listen: "unix:" + sock, worker: c.workerOpts()}, "demo")
		}()
		waitFor(t, "the serving line", errc, func() bool { return strings.Count(c.stderr.String(), "as NBD export") > n && fileIsSocket(sock) })
		return func() error {
			cancel()
			select {
			case err := <-errc:
				return err
			case <-time.After(30 * time.Second):
				return fmt.Errorf("serve-nbd did not return 30s after cancel")
			}
		}
	}
	stop := serve()

	// A reader in a loop: 120 reads of 4 KiB spread over the image, 25 ms
	// apart (3 s in all); the server restarts while it runs.
	const block, reads = 4096, 120
	var offs []int64
	for k := range reads {
		offs = append(offs, (int64(len(want))/reads*int64(k*37%reads))/block*block)
	}
	args := []string{"-r", "--image-opts", "driver=nbd,server.type=unix,server.path=" + sock + ",export=demo,reconnect-delay=30"}
	for _, off := range offs {
		args = append(args, "-c", fmt.Sprintf("read -v %d %d", off, block), "-c", "sleep 25")
	}
	qemu := exec.Command("qemu-io", args...)
	var out bytes.Buffer
	qemu.Stdout, qemu.Stderr = &out, &out
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- qemu.Wait() }()
	waitFor(t, "the client's connection", done, func() bool { return strings.Contains(c.log.String(), "nbd transmission started") })
	if err := stop(); err != nil {
		t.Fatalf("first server: %v", err)
	}
	stop = serve()
	defer stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("qemu-io: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		qemu.Process.Kill()
		t.Fatalf("qemu-io did not finish\n%s", out.String())
	}
	got := parseQemuDumps(t, out.String())
	if len(got) != len(offs) {
		t.Fatalf("qemu-io dumped %d reads, want %d:\n%s", len(got), len(offs), out.String())
	}
	for i, off := range offs {
		if !bytes.Equal(got[i], want[off:off+block]) {
			t.Errorf("read %d at %d: bytes differ from the built image", i, off)
		}
	}
	if n := strings.Count(c.log.String(), "nbd transmission started"); n < 2 {
		t.Errorf("%d NBD connections, want at least 2 (the client reconnected)", n)
	}
}

func fileIsSocket(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// parseQemuDumps returns the bytes of each "read -v" in qemu-io's output,
// in order ("OFFSET:  xx xx … ascii" lines, then "read N/N bytes…").
func parseQemuDumps(t *testing.T, s string) [][]byte {
	t.Helper()
	var out [][]byte
	var cur []byte
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "read ") {
			out, cur = append(out, cur), nil
			continue
		}
		addr, rest, ok := strings.Cut(line, ":  ")
		if _, err := strconv.ParseUint(addr, 16, 64); !ok || err != nil || len(addr) != 8 {
			continue
		}
		for _, f := range strings.Fields(rest)[:min(16, len(strings.Fields(rest)))] {
			b, err := hex.DecodeString(f)
			if err != nil || len(b) != 1 {
				break
			}
			cur = append(cur, b[0])
		}
	}
	return out
}
