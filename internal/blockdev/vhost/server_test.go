package vhost

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
)

// Guest memory layout of the test front-end: one memfd region.
const (
	gBase    = 0x40000000     // guest physical address
	uBase    = 0x7f0000000000 // the front-end's virtual address
	memSize  = 1 << 20
	availOff = 0x1000
	usedOff  = 0x2000
	bufOff   = 0x10000
	qSize    = 16
	// slotStride is the buffer area of one request slot (up to 64 KiB
	// of data).
	slotStride = 0x11000
)

// frontend plays QEMU's part: it owns a memfd as guest memory, the kick
// and call eventfds, and acts as the virtio driver on the ring.
type frontend struct {
	t          testing.TB
	conn       *net.UnixConn
	memfd      int
	mem        []byte
	kick, call *os.File
	avail      uint16 // next available index
	used       uint16 // used entries seen
}

func eventfd(t testing.TB) *os.File {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "eventfd")
}

// serve starts a Server for dev on a temp socket and connects a front-end.
// The returned stop cancels the server and waits for it.
func serve(t testing.TB, dev blockdev.Device, c Config) (*frontend, func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(dev, c).Serve(ctx, l) }()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, memSize); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	f := &frontend{t: t, conn: conn, memfd: fd, mem: mem, kick: eventfd(t), call: eventfd(t)}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			conn.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			f.kick.Close()
			f.call.Close()
			unix.Munmap(mem)
			unix.Close(fd)
		})
	}
	t.Cleanup(stop)
	return f, stop
}

func (f *frontend) send(req request, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.conn.WriteMsgUnix(encode(req, flags, payload), oob, nil); err != nil {
		f.t.Fatalf("sending %s: %v", req, err)
	}
}

// recv reads one reply and checks it answers req.
func (f *frontend) recv(req request) []byte {
	f.t.Helper()
	f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(f.conn, hdr); err != nil {
		f.t.Fatalf("reading the reply to %s: %v", req, err)
	}
	if r, fl := request(binary.LittleEndian.Uint32(hdr)), binary.LittleEndian.Uint32(hdr[4:]); r != req || fl != flagVersion|flagReply {
		f.t.Fatalf("reply %s flags %#x to %s", r, fl, req)
	}
	p := make([]byte, binary.LittleEndian.Uint32(hdr[8:]))
	if _, err := io.ReadFull(f.conn, p); err != nil {
		f.t.Fatalf("reading the reply to %s: %v", req, err)
	}
	return p
}

func (f *frontend) recvU64(req request) uint64 {
	f.t.Helper()
	p := f.recv(req)
	if len(p) != 8 {
		f.t.Fatalf("reply to %s has %d bytes", req, len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// start negotiates as QEMU does and starts queue 0.
func (f *frontend) start() uint64 {
	f.t.Helper()
	f.send(reqGetFeatures, flagVersion, nil)
	feat := f.recvU64(reqGetFeatures)
	f.send(reqGetProtocolFeatures, flagVersion, nil)
	if p := f.recvU64(reqGetProtocolFeatures); p&(protoConfig|protoReplyAck) != protoConfig|protoReplyAck {
		f.t.Fatalf("protocol features %#x lack CONFIG or REPLY_ACK", p)
	}
	f.send(reqSetProtocolFeatures, flagVersion, u64(protoConfig|protoReplyAck))
	f.send(reqSetOwner, flagVersion, nil)
	f.send(reqSetFeatures, flagVersion|flagNeedReply, u64(feat))
	if v := f.recvU64(reqSetFeatures); v != 0 {
		f.t.Fatalf("SET_FEATURES acked %d", v)
	}
	f.send(reqSetMemTable, flagVersion|flagNeedReply, memTablePayload(memRegion{GuestAddr: gBase, Size: memSize, UserAddr: uBase}), f.memfd)
	if v := f.recvU64(reqSetMemTable); v != 0 {
		f.t.Fatalf("SET_MEM_TABLE acked %d", v)
	}
	f.send(reqSetVringNum, flagVersion, state(0, qSize))
	f.send(reqSetVringBase, flagVersion, state(0, 0))
	f.send(reqSetVringAddr, flagVersion, addrPayload(vringAddr{Desc: uBase, Avail: uBase + availOff, Used: uBase + usedOff}))
	f.send(reqSetVringKick, flagVersion, u64(0), int(f.kick.Fd()))
	f.send(reqSetVringCall, flagVersion, u64(0), int(f.call.Fd()))
	f.send(reqSetVringEnable, flagVersion|flagNeedReply, state(0, 1))
	if v := f.recvU64(reqSetVringEnable); v != 0 {
		f.t.Fatalf("SET_VRING_ENABLE acked %d", v)
	}
	return feat
}

// submit lays out a read (or, with write, a write of data) of len(data)
// bytes at sector in descriptor slot slot*3 and buffer area slot, makes it
// available and kicks.
func (f *frontend) submit(slot int, typ uint32, sector uint64, data []byte, kick bool) {
	d := uint16(slot * 3)
	area := uint64(bufOff + slot*slotStride)
	hdr := binary.LittleEndian.AppendUint32(nil, typ)
	hdr = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(hdr, 0), sector)
	copy(f.mem[area:], hdr)
	dataFlags := uint16(descFNext | descFWrite)
	if typ == blkTOut {
		dataFlags = descFNext
		copy(f.mem[area+16:], data)
	}
	f.mem[area+16+uint64(len(data))] = 0xff
	putDescs(f.mem[int(d)*descSize:],
		desc{gBase + area, 16, descFNext, d + 1},
		desc{gBase + area + 16, uint32(len(data)), dataFlags, d + 2},
		desc{gBase + area + 16 + uint64(len(data)), 1, descFWrite, 0})
	binary.LittleEndian.PutUint16(f.mem[availOff+4+2*int(f.avail%qSize):], d)
	f.avail++
	binary.LittleEndian.PutUint16(f.mem[availOff+2:], f.avail)
	if kick {
		f.notify()
	}
}

func (f *frontend) notify() {
	f.t.Helper()
	if _, err := f.kick.Write(binary.NativeEndian.AppendUint64(nil, 1)); err != nil {
		f.t.Fatal(err)
	}
}

// wait returns the next n used entries (head, len) once the device
// signalled them.
func (f *frontend) wait(n int) [][2]uint32 {
	f.t.Helper()
	var buf [8]byte
	for {
		idx := binary.LittleEndian.Uint16(f.mem[usedOff+2:])
		if idx-f.used >= uint16(n) {
			break
		}
		f.call.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := f.call.Read(buf[:]); err != nil {
			f.t.Fatalf("waiting for %d used entries (have %d): %v", n, idx-f.used, err)
		}
	}
	var out [][2]uint32
	for range n {
		e := f.mem[usedOff+4+8*int(f.used%qSize):]
		out = append(out, [2]uint32{binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])})
		f.used++
	}
	return out
}

func (f *frontend) area(slot, n int) []byte {
	a := bufOff + slot*slotStride + 16
	return f.mem[a : a+n+1]
}

func testImage() []byte {
	img := make([]byte, 4<<20)
	for i := range img {
		img[i] = byte(i*31 + i>>12)
	}
	return img
}

func TestSession(t *testing.T) {
	img := testImage()
	f, stop := serve(t, blockdev.NewMemDevice(img), Config{})
	feat := f.start()
	if feat&(featVersion1|featProtocol|featBlkRO) != featVersion1|featProtocol|featBlkRO {
		t.Errorf("features %#x lack VERSION_1, PROTOCOL_FEATURES or RO", feat)
	}
	f.send(reqGetQueueNum, flagVersion, nil)
	if n := f.recvU64(reqGetQueueNum); n != 1 {
		t.Errorf("GET_QUEUE_NUM = %d", n)
	}
	f.send(reqGetConfig, flagVersion, configPayload(0, 60, 0, make([]byte, 60)))
	cfg := f.recv(reqGetConfig)
	if len(cfg) != 72 || binary.LittleEndian.Uint64(cfg[12:]) != uint64(len(img))/512 {
		t.Errorf("GET_CONFIG reply of %d bytes: %v", len(cfg), cfg)
	}
	f.send(reqSetConfig, flagVersion|flagNeedReply, configPayload(32, 1, 0, []byte{1}))
	if v := f.recvU64(reqSetConfig); v == 0 {
		t.Error("SET_CONFIG acked as done")
	}
	f.send(31 /* GET_INFLIGHT_FD, not offered */, flagVersion|flagNeedReply, make([]byte, 16))
	if v := f.recvU64(31); v == 0 {
		t.Error("an unknown request acked as done")
	}

	// Two reads, a write to the read-only disk, one kick.
	f.submit(0, blkTIn, 8, make([]byte, 4096), false)
	f.submit(1, blkTIn, 8190, make([]byte, 1024), false)
	f.submit(2, blkTOut, 0, []byte("nope"), true)
	used := f.wait(3)
	got := map[uint32]uint32{}
	for _, u := range used {
		got[u[0]] = u[1]
	}
	if diff := cmp.Diff(map[uint32]uint32{0: 4097, 3: 1025, 6: 1}, got); diff != "" {
		t.Errorf("used entries head→len (-want +got):\n%s", diff)
	}
	if a := f.area(0, 4096); !bytes.Equal(a[:4096], img[8*512:8*512+4096]) || a[4096] != blkSOK {
		t.Errorf("read at sector 8: status %d, data differs: %v", a[4096], !bytes.Equal(a[:4096], img[8*512:8*512+4096]))
	}
	if a := f.area(1, 1024); !bytes.Equal(a[:1024], img[8190*512:]) || a[1024] != blkSOK {
		t.Errorf("read of the last sectors: status %d", a[1024])
	}
	if a := f.area(2, 4); a[4] != blkSIOErr {
		t.Errorf("write to a read-only disk: status %d, want IOERR", a[4])
	}

	// GET_VRING_BASE stops the queue and reports the next index; a kick
	// after it is not served.
	f.send(reqGetVringBase, flagVersion, state(0, 0))
	if p := f.recv(reqGetVringBase); !cmp.Equal(p, state(0, 3)) {
		t.Errorf("GET_VRING_BASE = %v, want index 0 num 3", p)
	}
	f.submit(0, blkTIn, 0, make([]byte, 512), true)
	time.Sleep(50 * time.Millisecond)
	if idx := binary.LittleEndian.Uint16(f.mem[usedOff+2:]); idx != 3 {
		t.Errorf("a stopped queue served a request: used index %d", idx)
	}
	// Restarting (as QEMU does after a stop) serves it from the base.
	k2 := eventfd(t)
	defer k2.Close()
	f.kick = k2
	f.send(reqSetVringBase, flagVersion, state(0, 3))
	f.send(reqSetVringKick, flagVersion|flagNeedReply, u64(0), int(k2.Fd()))
	if v := f.recvU64(reqSetVringKick); v != 0 {
		t.Fatalf("SET_VRING_KICK acked %d", v)
	}
	if u := f.wait(1); u[0] != [2]uint32{0, 513} {
		t.Errorf("after the restart: used %v, want head 0 len 513", u)
	}
	stop()
}

// gatedDevice blocks every read until the gate opens, counting how many
// wait at once.
type gatedDevice struct {
	blockdev.Device
	gate    chan struct{}
	waiting atomic.Int32
	peak    atomic.Int32
}

func (g *gatedDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n := g.waiting.Add(1)
	for {
		if old := g.peak.Load(); n <= old || g.peak.CompareAndSwap(old, n) {
			break
		}
	}
	defer g.waiting.Add(-1)
	select {
	case <-g.gate:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return g.Device.ReadAt(ctx, p, off)
}

// waitFor polls until n reads wait at the gate.
func (g *gatedDevice) waitFor(t *testing.T, n int32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for g.waiting.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads at the gate, want %d", g.waiting.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDisconnectAbandonsRequests(t *testing.T) {
	dev := &gatedDevice{Device: blockdev.NewMemDevice(testImage()), gate: make(chan struct{})}
	f, stop := serve(t, dev, Config{})
	f.start()
	f.submit(0, blkTIn, 0, make([]byte, 512), true)
	dev.waitFor(t, 1)
	// Only the connection closes: the server itself keeps running.
	f.conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for dev.waiting.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the server still waits for a read after the front-end left")
		}
		time.Sleep(time.Millisecond)
	}
	stop()
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestNoLeaks(t *testing.T) {
	before := openFDs(t)
	for range 5 {
		f, stop := serve(t, blockdev.NewMemDevice(testImage()), Config{})
		f.start()
		f.submit(0, blkTIn, 0, make([]byte, 512), true)
		f.wait(1)
		stop()
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d open file descriptors after 5 sessions, %d before", after, before)
	}
}

// BenchmarkRead is one read request through the whole path: the kick
// eventfd, the ring, the worker, the device, guest memory, the used ring
// and the call eventfd.
func BenchmarkRead(b *testing.B) {
	for _, size := range []int{4096, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			f, _ := serve(b, blockdev.NewMemDevice(testImage()), Config{})
			f.start()
			data := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				f.submit(i%4, blkTIn, uint64(i%64)*128, data, true)
				f.wait(1)
			}
		})
	}
}
