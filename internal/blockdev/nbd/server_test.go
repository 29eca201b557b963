package nbd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

const imageSize = 64 << 20

// testImage is pseudo-random with zero ranges (as an ext4 image has).
func testImage() []byte {
	b := make([]byte, imageSize)
	r := rand.New(rand.NewPCG(42, 42))
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	clear(b[1<<20 : 5<<20])
	clear(b[imageSize-(3<<20)-123 : imageSize-(1<<20)])
	return b
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// serve runs s on a fresh listener ("tcp" → 127.0.0.1:0, "unix" → a socket
// in a temp dir) until the test ends, and returns the address.
func serve(tb testing.TB, network string, exports map[string]Export, c Config) string {
	tb.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(tb.TempDir(), "nbd.sock")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(testLogWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(exports, c).Serve(ctx, l) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve = %v", err)
		}
	})
	return l.Addr().String()
}

func uri(network, addr, name string) string {
	if network == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, addr)
	}
	return fmt.Sprintf("nbd://%s/%s", addr, name)
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return out
}

func TestNBDInfo(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("nbdinfo"))
	addr := serve(t, "tcp", map[string]Export{"img": {Device: blockdev.NewMemDevice(testImage())}}, Config{})
	out := run(t, "nbdinfo", "--json", uri("tcp", addr, "img"))
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name     string `json:"export-name"`
			Size     int64  `json:"export-size"`
			ReadOnly bool   `json:"is_read_only"`
			CanFlush bool   `json:"can_flush"`
			Multi    bool   `json:"can_multi_conn"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("parsing nbdinfo output: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo = %s", out)
	}
	e := info.Exports[0]
	if e.Name != "img" || e.Size != imageSize || !e.ReadOnly || !e.CanFlush || !e.Multi {
		t.Errorf("nbdinfo export = %+v, want name img, size %d, read-only, flush, multi-conn", e, imageSize)
	}
	// --list uses NBD_OPT_LIST.
	list := run(t, "nbdinfo", "--list", "--json", uri("tcp", addr, ""))
	if !bytes.Contains(list, []byte(`"export-name": "img"`)) {
		t.Errorf("nbdinfo --list = %s, want export img", list)
	}
}

func TestNBDCopyExactBytes(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("nbdcopy"))
	img := testImage()
	want := sha256.Sum256(img)
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := serve(t, network, map[string]Export{"img": {Device: blockdev.NewMemDevice(img)}}, Config{})
			out := filepath.Join(t.TempDir(), "out.img")
			run(t, "nbdcopy", uri(network, addr, "img"), out)
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != want {
				t.Errorf("nbdcopy over %s: sha256 %x, want %x", network, sha256.Sum256(got), want)
			}
		})
	}
}

func TestQemuImgConvert(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("qemu-img"))
	img := testImage()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, img, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, "tcp", map[string]Export{"img": {Device: blockdev.NewMemDevice(img)}}, Config{})
	host, port, _ := net.SplitHostPort(addr)
	out := filepath.Join(dir, "out.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", fmt.Sprintf("nbd:%s:%s:exportname=img", host, port), out)
	if got := run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, out); !bytes.Contains(got, []byte("Images are identical")) {
		t.Errorf("qemu-img compare = %s", got)
	}
}

func TestOverlayWritesThroughNBD(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("nbdcopy"))
	img := testImage()
	orig := sha256.Sum256(img)
	dir := t.TempDir()
	ov, err := blockdev.NewOverlay(blockdev.NewMemDevice(img), filepath.Join(dir, "cow"))
	if err != nil {
		t.Fatal(err)
	}
	defer ov.Close()
	addr := serve(t, "unix", map[string]Export{"img": {Device: ov}}, Config{})

	// Write 3 MiB + 5 bytes of new data at the start with nbdcopy (the
	// rest of the export keeps the base bytes).
	newData := bytes.Repeat([]byte("lode-cow"), (3<<20+5)/8+1)[:3<<20+5]
	in := filepath.Join(dir, "in.bin")
	if err := os.WriteFile(in, newData, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", in, uri("unix", addr, "img"))

	out := filepath.Join(dir, "out.img")
	run(t, "nbdcopy", uri("unix", addr, "img"), out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Clone(newData), img[len(newData):]...)
	if !bytes.Equal(got, want) {
		t.Errorf("read back after write differs from expected merge")
	}
	if sha256.Sum256(img) != orig {
		t.Error("base device changed")
	}

	// The in-test client sees the export as writable; zeroing works.
	c := dialNBD(t, "unix", addr)
	if typ, err := c.goExport("img"); err != nil || typ != repAck {
		t.Fatalf("GO = %d, %v", typ, err)
	}
	if c.flags&tflagReadOnly != 0 {
		t.Errorf("flags %#x: overlay export is read-only", c.flags)
	}
	if errno, err := c.do(cmdWriteZeroes, 100, 1000, nil, nil); errno != 0 || err != nil {
		t.Fatalf("WRITE_ZEROES = %d, %v", errno, err)
	}
	buf := make([]byte, 1100)
	if errno, err := c.do(cmdRead, 0, 1100, nil, buf); errno != 0 || err != nil {
		t.Fatalf("READ = %d, %v", errno, err)
	}
	if !bytes.Equal(buf[:100], newData[:100]) || !bytes.Equal(buf[100:], make([]byte, 1000)) {
		t.Error("READ after WRITE_ZEROES: wrong bytes")
	}
	if errno, err := c.do(cmdFlush, 0, 0, nil, nil); errno != 0 || err != nil {
		t.Errorf("FLUSH = %d, %v", errno, err)
	}
}

// failingDevice fails reads overlapping [badOff, badOff+badLen).
type failingDevice struct {
	blockdev.Device
	badOff, badLen int64
}

func (d failingDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < d.badOff+d.badLen && off+int64(len(p)) > d.badOff {
		return 0, errors.New("chunk 1234 corrupt")
	}
	return d.Device.ReadAt(ctx, p, off)
}

func TestRequestErrors(t *testing.T) {
	img := testImage()
	dev := failingDevice{Device: blockdev.NewMemDevice(img), badOff: 8 << 20, badLen: 4096}
	addr := serve(t, "tcp", map[string]Export{"img": {Device: dev}}, Config{MaxRequest: 1 << 20})
	c := dialNBD(t, "tcp", addr)
	if typ, err := c.goExport("nope"); err != nil || typ != repErrUnknown {
		t.Fatalf("GO nope = %#x, %v, want NBD_REP_ERR_UNKNOWN", typ, err)
	}
	if err := c.sendOpt(optStructuredReply, nil); err != nil {
		t.Fatal(err)
	}
	if _, typ, _, err := c.readOptReply(); err != nil || typ != repErrUnsup {
		t.Fatalf("STRUCTURED_REPLY = %#x, %v, want NBD_REP_ERR_UNSUP", typ, err)
	}
	if typ, err := c.goExport(""); err != nil || typ != repAck { // the default export
		t.Fatalf("GO \"\" = %#x, %v", typ, err)
	}
	if c.size != imageSize || c.flags&tflagReadOnly == 0 {
		t.Fatalf("size %d flags %#x, want %d and read-only", c.size, c.flags, imageSize)
	}
	buf := make([]byte, 1<<20)
	tests := []struct {
		name    string
		typ     uint16
		off     uint64
		length  uint32
		payload []byte
		want    uint32
	}{
		{"read ok", cmdRead, 0, 4096, nil, 0},
		{"read of failing range", cmdRead, 8<<20 + 100, 10, nil, errIO},
		{"read next to failing range", cmdRead, 8<<20 + 4096, 4096, nil, 0},
		{"read past end", cmdRead, imageSize - 10, 11, nil, errInval},
		{"read offset overflow", cmdRead, 1<<64 - 1, 2, nil, errInval},
		{"read too big", cmdRead, 0, 1<<20 + 1, nil, errOverflow},
		{"write read-only", cmdWrite, 0, 4, []byte{1, 2, 3, 4}, errPerm},
		{"write too big", cmdWrite, 0, 1<<20 + 1, make([]byte, 1<<20+1), errInval},
		{"trim read-only", cmdTrim, 0, 4096, nil, errPerm},
		{"flush", cmdFlush, 0, 0, nil, 0},
		{"unknown command", 77, 0, 0, nil, errInval},
		{"read ok after errors", cmdRead, imageSize - 4096, 4096, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errno, err := c.do(tc.typ, tc.off, tc.length, tc.payload, buf)
			if err != nil {
				t.Fatal(err)
			}
			if errno != tc.want {
				t.Fatalf("errno = %d, want %d", errno, tc.want)
			}
			if tc.typ == cmdRead && errno == 0 && !bytes.Equal(buf[:tc.length], img[tc.off:tc.off+uint64(tc.length)]) {
				t.Errorf("READ(%d, %d) returned wrong bytes", tc.off, tc.length)
			}
		})
	}
	// Garbage closes the connection.
	if _, err := c.c.Write(make([]byte, requestSize)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.ReadFull(c.br, buf[:1]); err == nil {
		t.Errorf("after a bad magic the server sent %d bytes, want the connection closed", n)
	}
}

func TestNBDCopySeesEIO(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("nbdcopy"))
	dev := failingDevice{Device: blockdev.NewMemDevice(testImage()), badOff: 8 << 20, badLen: 1}
	addr := serve(t, "tcp", map[string]Export{"img": {Device: dev}}, Config{})
	out, err := exec.Command("nbdcopy", uri("tcp", addr, "img"), filepath.Join(t.TempDir(), "out")).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("Input/output error")) {
		t.Errorf("nbdcopy of a failing device = %v, %s; want failure with Input/output error", err, out)
	}
}

func BenchmarkNBDRead_128K(b *testing.B) {
	img := testImage()
	addr := serve(b, "unix", map[string]Export{"img": {Device: blockdev.NewMemDevice(img)}}, Config{})
	c := dialNBD(b, "unix", addr)
	if typ, err := c.goExport("img"); err != nil || typ != repAck {
		b.Fatalf("GO = %d, %v", typ, err)
	}
	const n = 128 << 10
	buf := make([]byte, n)
	b.SetBytes(n)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		off := uint64(i%(imageSize/n)) * n
		if errno, err := c.do(cmdRead, off, n, nil, buf); err != nil || errno != 0 {
			b.Fatalf("READ(%d) = %d, %v", off, errno, err)
		}
	}
}
