package fuse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

// connPair returns the two ends of a unix stream socketpair.
func connPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b := conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// directReader reads files under dir with O_DIRECT in a loop (so every
// read goes through the loop device to the FUSE server) and checks every
// byte against want.
type directReader struct {
	reads, errs atomic.Int64
	mu          sync.Mutex
	firstErr    error
	stop        chan struct{}
	done        chan struct{}
}

func startDirectReader(t *testing.T, dir string, want map[string][]byte) *directReader {
	r := &directReader{stop: make(chan struct{}), done: make(chan struct{})}
	// O_DIRECT wants an aligned buffer.
	buf, err := unix.Mmap(-1, 0, 256<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	fail := func(err error) {
		r.errs.Add(1)
		r.mu.Lock()
		if r.firstErr == nil {
			r.firstErr = err
		}
		r.mu.Unlock()
	}
	go func() {
		defer close(r.done)
		defer unix.Munmap(buf)
		for {
			for name, data := range want {
				select {
				case <-r.stop:
					return
				default:
				}
				f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDONLY|unix.O_DIRECT, 0)
				if err != nil {
					fail(err)
					continue
				}
				var got []byte
				for {
					n, err := f.Read(buf)
					r.reads.Add(1)
					got = append(got, buf[:n]...)
					if n == 0 || err != nil {
						if err != nil && err.Error() != "EOF" {
							fail(fmt.Errorf("reading %s at %d: %w", name, len(got), err))
						}
						break
					}
				}
				f.Close()
				if !bytes.Equal(got, data) {
					fail(fmt.Errorf("%s: read %d bytes differing from the source's %d", name, len(got), len(data)))
				}
			}
		}
	}()
	return r
}

func (r *directReader) finish() (reads, errs int64, first error) {
	close(r.stop)
	<-r.done
	return r.reads.Load(), r.errs.Load(), r.firstErr
}

// slowDevice delays every read, so that reads are in flight when a
// handover starts, and counts them.
type slowDevice struct {
	blockdev.Device
	delay    time.Duration
	inflight atomic.Int64
}

func (d *slowDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	time.Sleep(d.delay)
	return d.Device.ReadAt(ctx, p, off)
}

// TestHandoverWhileReading hands a mounted image from one server to the
// next six times while a reader reads its files with O_DIRECT in a loop,
// and once to a side that refuses it, with reads in flight in the Device
// as it starts: the reader sees no error and
// every byte right, each old server's goroutines and descriptors are
// gone, and the last server tears the mount down as usual.
func TestHandoverWhileReading(t *testing.T) {
	requireMount(t)
	src := makeTree(t, 6<<20)
	_, img := makeImage(t, src, "64M")
	dev := &slowDevice{Device: blockdev.NewMemDevice(img), delay: 3 * time.Millisecond}
	base := t.TempDir()
	mt := mounted{dir: filepath.Join(base, "mnt"), state: filepath.Join(base, "state")}
	if err := os.Mkdir(mt.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	o := MountOptions{StateDir: mt.state, Options: Options{Log: testLog(t)}}
	cur, err := MountImage(context.Background(), mt.dir, dev, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cur.Close()
		checkTornDown(t, mt)
	})
	want := map[string][]byte{"big": randomBytes(2, 6<<20), "etc/sub/medium": randomBytes(1, 300<<10), "etc/hostname": []byte("lode\n")}
	r := startDirectReader(t, mt.dir, want)
	defer func() {
		select {
		case <-r.done:
		default:
			r.finish()
		}
	}()
	waitReads := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for start := r.reads.Load(); r.reads.Load() < start+n; {
			if time.Now().After(deadline) {
				t.Fatalf("the reader made no progress (%d reads)", r.reads.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitReads(50)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A side that refuses (wrong device size): the old server serves on.
	{
		a, b := connPair(t)
		errc := make(chan error, 1)
		go func() {
			h, err := ReceiveHandover(ctx, b)
			if err != nil {
				errc <- err
				return
			}
			_, err = h.Adopt(blockdev.NewMemDevice(img[:len(img)-4096]), o)
			errc <- err
		}()
		if err := cur.HandOver(ctx, a, nil); !errors.Is(err, ErrHandover) {
			t.Fatalf("HandOver to a side with the wrong device = %v, want ErrHandover", err)
		}
		if err := <-errc; err == nil {
			t.Fatal("Adopt with a device of the wrong size succeeded")
		}
		waitReads(50)
	}

	var res lodetest.Resources
	busy := 0 // handovers that began with a Device read in flight
	for i := range 6 {
		a, b := connPair(t)
		type adopted struct {
			m    *ImageMount
			meta json.RawMessage
			err  error
		}
		got := make(chan adopted, 1)
		go func() {
			h, err := ReceiveHandover(ctx, b)
			if err != nil {
				got <- adopted{err: err}
				return
			}
			if h.Dir() != mt.dir || h.Size() != int64(len(img)) {
				h.Reject(fmt.Errorf("unexpected dir %s size %d", h.Dir(), h.Size()))
				got <- adopted{err: fmt.Errorf("handover of %s size %d", h.Dir(), h.Size())}
				return
			}
			m, err := h.Adopt(dev, o)
			got <- adopted{m: m, meta: h.Meta(), err: err}
		}()
		old := cur
		// Start while the Device serves a read: the old server must
		// answer it before letting go.
		for deadline := time.Now().Add(5 * time.Second); dev.inflight.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Microsecond)
		}
		if dev.inflight.Load() > 0 {
			busy++
		}
		if err := old.HandOver(ctx, a, map[string]int{"generation": i}); err != nil {
			t.Fatalf("HandOver #%d: %v", i, err)
		}
		ad := <-got
		a.Close()
		b.Close()
		if ad.err != nil {
			t.Fatalf("adopting #%d: %v", i, ad.err)
		}
		cur = ad.m
		if string(ad.meta) != fmt.Sprintf(`{"generation":%d}`, i) {
			t.Errorf("meta #%d = %s", i, ad.meta)
		}
		select {
		case <-old.fm.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("the old server #%d has not exited", i)
		}
		old.Wait()
		if err := old.Close(); err != nil {
			t.Errorf("Close after HandOver = %v", err)
		}
		if !isMounted(mt.dir) {
			t.Fatalf("%s unmounted by the handover", mt.dir)
		}
		if i == 0 {
			res = lodetest.Count(t) // one server, the reader, as from now on
		}
		waitReads(100)
	}
	// Every handed-over server's reader, handlers and descriptors are gone.
	lodetest.CheckNoLeak(t, "5 handovers", res, 4)
	st, err := readState(entryDir(mt.state, mt.dir))
	if err != nil || st.PID != os.Getpid() || st.Loop != cur.Loop() {
		t.Errorf("state after the handovers = %+v, %v", st, err)
	}
	reads, errs, first := r.finish()
	if errs != 0 || reads == 0 {
		t.Fatalf("reader: %d reads, %d errors, first %v", reads, errs, first)
	}
	t.Logf("%d O_DIRECT reads, no errors, over 7 handovers, %d of them begun with a read in the Device", reads, busy)
	if busy < 3 {
		t.Errorf("only %d of 6 handovers began with a read in flight: the test did not test losslessness", busy)
	}
	if err := cur.Close(); err != nil {
		t.Fatalf("Close of the adopted mount: %v", err)
	}
	checkTornDown(t, mt)
}

// FuzzParseRequest: parseRequest never panics, and what it accepts is
// consistent with the bytes.
func FuzzParseRequest(f *testing.F) {
	hdr := func(op uint32, unique, node uint64, body []byte) []byte {
		b := ne.AppendUint32(nil, uint32(inHeaderLen+len(body)))
		b = ne.AppendUint32(b, op)
		b = ne.AppendUint64(b, unique)
		b = ne.AppendUint64(b, node)
		b = append(b, make([]byte, 16)...)
		return append(b, body...)
	}
	read := ne.AppendUint64(nil, 1)
	read = ne.AppendUint64(read, 1<<20)
	read = ne.AppendUint32(read, 4096)
	read = append(read, make([]byte, 20)...)
	f.Add(hdr(opRead, 2, fileNode, read))
	f.Add(hdr(opLookup, 3, rootNode, []byte("image\x00")))
	f.Add(hdr(opInit, 4, 0, append(ne.AppendUint32(ne.AppendUint32(nil, 7), 38), make([]byte, 56)...)))
	f.Add(hdr(opInterrupt, 5, 0, ne.AppendUint64(nil, 2)))
	f.Add(hdr(opOpen, 6, fileNode, make([]byte, 8)))
	f.Add(hdr(opForget, 7, fileNode, make([]byte, 8)))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		if len(b) < inHeaderLen || int(ne.Uint32(b)) != len(b) {
			t.Fatalf("accepted %d bytes whose header says %d", len(b), ne.Uint32(b))
		}
		if r.op != ne.Uint32(b[4:]) || r.unique != ne.Uint64(b[8:]) || r.node != ne.Uint64(b[16:]) {
			t.Fatalf("header fields %+v differ from the bytes", r)
		}
		switch r.op {
		case opRead, opReaddir:
			if r.offset < 0 || len(b) < inHeaderLen+readInLen {
				t.Fatalf("accepted READ with offset %d from %d bytes", r.offset, len(b))
			}
		case opLookup:
			if bytes.IndexByte([]byte(r.name), 0) >= 0 || len(r.name) > len(b)-inHeaderLen-1 {
				t.Fatalf("LOOKUP name %q", r.name)
			}
		}
	})
}

// TestInterruptCancelsDeviceRead: a process blocked in a read of the FUSE
// file that gets a signal makes the kernel send INTERRUPT, which cancels
// the Device read's context; the process then goes away.
func TestInterruptCancelsDeviceRead(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Tool("dd"))
	img := randomBytes(9, 1<<20)
	dev := &faultyDevice{Device: blockdev.NewMemDevice(img), off: 0, end: int64(len(img)), stall: true, stalled: make(chan struct{}, 1)}
	dir := filepath.Join(t.TempDir(), "m")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := ServeFile(context.Background(), dir, "disk.img", dev, Options{Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	}()
	dd := exec.Command("dd", "if="+m.Path(), "of=/dev/null", "bs=4096", "count=1")
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.stalled:
	case <-time.After(30 * time.Second):
		dd.Process.Kill()
		t.Fatal("dd never reached the device")
	}
	dd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- dd.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			t.Errorf("dd of a stalled read exited 0 after SIGTERM")
		}
	case <-time.After(10 * time.Second):
		m.cancelReads()
		<-exited
		t.Fatal("dd still blocked 10 s after SIGTERM: INTERRUPT did not cancel the Device read")
	}
	m.s.mu.Lock()
	left := len(m.s.inflight)
	m.s.mu.Unlock()
	if left != 0 {
		t.Errorf("%d READs still registered after the interrupted one ended", left)
	}
}
