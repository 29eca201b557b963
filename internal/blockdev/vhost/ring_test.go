package vhost

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/blockdev"
)

// fakeMem is guest memory in a Go slice: one region at guest and user
// address base. It is 16-byte aligned like a real mapping's pages.
func fakeMem(base uint64, size int) (*guestMemory, []byte) {
	raw := make([]byte, size+16)
	off := (16 - int(uintptr(unsafe.Pointer(&raw[0]))%16)) % 16
	data := raw[off : off+size : off+size]
	return &guestMemory{regions: []region{{guest: base, user: base, data: data}}}, data
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func putDescs(table []byte, ds ...desc) {
	for i, d := range ds {
		e := table[i*descSize:]
		binary.LittleEndian.PutUint64(e, d.addr)
		binary.LittleEndian.PutUint32(e[8:], d.len)
		binary.LittleEndian.PutUint16(e[12:], d.flags)
		binary.LittleEndian.PutUint16(e[14:], d.next)
	}
}

func TestWalkChain(t *testing.T) {
	const base = 0x10000
	mem, data := fakeMem(base, 64<<10)
	for _, tc := range []struct {
		name    string
		descs   []desc
		head    uint16
		in, out []int // buffer lengths
		err     bool
	}{
		{"header data status", []desc{
			{base + 0x1000, 16, descFNext, 1}, {base + 0x2000, 4096, descFNext | descFWrite, 2}, {base + 0x3000, 1, descFWrite, 0},
		}, 0, []int{16}, []int{4096, 1}, false},
		{"single readable", []desc{{base, 16, 0, 0}}, 0, []int{16}, nil, false},
		{"start mid-table", []desc{{base, 1, 0, 0}, {base, 16, descFNext, 0}}, 1, []int{16, 1}, nil, false},
		{"zero length at region end", []desc{{base + 64<<10, 0, 0, 0}}, 0, []int{0}, nil, false},
		{"head past table", []desc{{base, 16, 0, 0}}, 8, nil, nil, true},
		{"next past table", []desc{{base, 16, descFNext, 9}}, 0, nil, nil, true},
		{"loop", []desc{{base, 16, descFNext, 1}, {base, 16, descFNext, 0}}, 0, nil, nil, true},
		{"readable after writable", []desc{{base, 16, descFWrite | descFNext, 1}, {base, 16, 0, 0}}, 0, nil, nil, true},
		{"indirect", []desc{{base, 16, descFIndirect, 0}}, 0, nil, nil, true},
		{"below memory", []desc{{base - 1, 16, 0, 0}}, 0, nil, nil, true},
		{"past memory", []desc{{base + 64<<10 - 8, 16, 0, 0}}, 0, nil, nil, true},
		{"huge length", []desc{{base, 0xffffffff, 0, 0}}, 0, nil, nil, true},
		{"address wraps", []desc{{^uint64(0) - 4, 16, 0, 0}}, 0, nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table := make([]byte, 8*descSize)
			putDescs(table, tc.descs...)
			c, err := walkChain(mem, table, 8, tc.head, 128)
			if tc.err {
				if !errors.Is(err, errChain) {
					t.Errorf("walkChain = %v, want errChain", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			lens := func(bs [][]byte) []int {
				var l []int
				for _, b := range bs {
					l = append(l, len(b))
					// Every buffer lies inside the region.
					p, d := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unsafe.Pointer(&data[0]))
					if p < d || p+uintptr(len(b)) > d+uintptr(len(data)) {
						t.Errorf("buffer outside guest memory")
					}
				}
				return l
			}
			if diff := cmp.Diff(tc.in, lens(c.in)); diff != "" {
				t.Errorf("readable buffers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.out, lens(c.out)); diff != "" {
				t.Errorf("writable buffers (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzDescChain(f *testing.F) {
	const base = 0x1000
	seed := make([]byte, 4*descSize)
	putDescs(seed, desc{base, 16, descFNext, 1}, desc{base + 16, 512, descFNext | descFWrite, 2}, desc{base + 600, 1, descFWrite, 0})
	f.Add(seed, uint16(4), uint16(0))
	f.Add(seed, uint16(3), uint16(2))
	f.Fuzz(func(t *testing.T, table []byte, num, head uint16) {
		mem, data := fakeMem(base, 4096)
		c, err := walkChain(mem, table, num, head, segMax+2)
		if err != nil {
			return
		}
		if len(c.in)+len(c.out) > int(num) {
			t.Fatalf("%d buffers from a %d-entry table", len(c.in)+len(c.out), num)
		}
		var in, out uint64
		for _, b := range append(append([][]byte{}, c.in...), c.out...) {
			p, d := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unsafe.Pointer(&data[0]))
			if len(b) > 0 && (p < d || p+uintptr(len(b)) > d+uintptr(len(data))) {
				t.Fatalf("buffer outside guest memory")
			}
		}
		for _, b := range c.in {
			in += uint64(len(b))
		}
		for _, b := range c.out {
			out += uint64(len(b))
		}
		if in != c.inLen || out != c.outLen {
			t.Fatalf("lengths %d/%d, counted %d/%d", c.inLen, c.outLen, in, out)
		}
		// Serving whatever parsed must not panic either.
		newBlk(blockdev.NewMemDevice(make([]byte, 8192)), true, 1<<20, "").serve(context.Background(), c)
	})
}

func TestVringPopPush(t *testing.T) {
	const base = 0x1000
	mem, data := fakeMem(base, 8192)
	r, err := newVring(mem, 4, vringAddr{Desc: base, Avail: base + 64, Used: base + 128})
	if err != nil {
		t.Fatal(err)
	}
	avail := data[64:]
	binary.LittleEndian.PutUint16(avail[4:], 2)
	binary.LittleEndian.PutUint16(avail[6:], 3)
	binary.LittleEndian.PutUint16(avail[2:], 2)
	if n, err := r.pending(); n != 2 || err != nil {
		t.Fatalf("pending = %d, %v; want 2", n, err)
	}
	if h1, h2 := r.pop(), r.pop(); h1 != 2 || h2 != 3 {
		t.Errorf("popped %d, %d; want 2, 3", h1, h2)
	}
	r.push(3, 10)
	r.push(2, 20)
	used := data[128:]
	got := []uint32{uint32(binary.LittleEndian.Uint16(used[2:])),
		binary.LittleEndian.Uint32(used[4:]), binary.LittleEndian.Uint32(used[8:]),
		binary.LittleEndian.Uint32(used[12:]), binary.LittleEndian.Uint32(used[16:])}
	if diff := cmp.Diff([]uint32{2, 3, 10, 2, 20}, got); diff != "" {
		t.Errorf("used ring (-want +got):\n%s", diff)
	}
	// A driver claiming more entries than the ring holds is broken.
	binary.LittleEndian.PutUint16(avail[2:], 2+5)
	if _, err := r.pending(); !errors.Is(err, errChain) {
		t.Errorf("pending with 5 of 4 = %v, want errChain", err)
	}
	for _, a := range []vringAddr{
		{Desc: base, Avail: base + 64, Used: base + 130},  // misaligned used
		{Desc: base, Avail: base + 64, Used: base + 8190}, // past memory
		{Desc: 0, Avail: base + 64, Used: base + 128},     // below memory
	} {
		if _, err := newVring(mem, 4, a); !errors.Is(err, ErrProtocol) {
			t.Errorf("newVring(%+v) = %v, want ErrProtocol", a, err)
		}
	}
	if _, err := newVring(mem, 3, vringAddr{Desc: base, Avail: base + 64, Used: base + 128}); !errors.Is(err, ErrProtocol) {
		t.Errorf("newVring of 3 entries = %v, want ErrProtocol", err)
	}
}

// blkRequest lays out a virtio-blk request in fake memory: header, then data
// buffers (dataLens, writable when write is false), then the status byte.
func blkRequest(mem *guestMemory, data []byte, typ uint32, sector uint64, payload []byte, dataLens []int, writable bool) chain {
	const base = 0x1000
	var ds []desc
	at := uint64(0)
	put := func(b []byte, n int, flags uint16) {
		copy(data[at:], b)
		ds = append(ds, desc{base + at, uint32(n), flags | descFNext, uint16(len(ds) + 1)})
		at += uint64(n)
	}
	hdr := binary.LittleEndian.AppendUint32(nil, typ)
	hdr = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(hdr, 0), sector)
	put(hdr, 16, 0)
	for _, n := range dataLens {
		var f uint16
		if writable {
			f = descFWrite
		}
		put(payload[:n], n, f)
		payload = payload[n:]
	}
	data[at] = 0xff
	put(nil, 1, descFWrite)
	ds[len(ds)-1].flags &^= descFNext
	table := make([]byte, len(ds)*descSize)
	putDescs(table, ds...)
	c, err := walkChain(mem, table, uint16(len(ds)), 0, 128)
	if err != nil {
		panic(err)
	}
	return c
}

func TestServe(t *testing.T) {
	img := make([]byte, 1<<20)
	for i := range img {
		img[i] = byte(i * 7)
	}
	ctx := context.Background()
	mem, data := fakeMem(0x1000, 64<<10)
	status := func(c chain) byte { o := c.out[len(c.out)-1]; return o[len(o)-1] }
	gather := func(bs [][]byte) []byte { return bytes.Join(bs, nil) }

	ro := newBlk(blockdev.NewMemDevice(img), false, 1<<20, "serial-123")
	// A read of 2 buffers at sector 3.
	c := blkRequest(mem, data, blkTIn, 3, make([]byte, 1536), []int{1024, 512}, true)
	if n := ro.serve(ctx, c); n != 1537 || status(c) != blkSOK {
		t.Errorf("read: written %d, status %d", n, status(c))
	}
	if got := gather(c.out)[:1536]; !bytes.Equal(got, img[3*512:3*512+1536]) {
		t.Error("read returned other bytes than the image's")
	}
	// A one-buffer read goes straight into guest memory.
	c = blkRequest(mem, data, blkTIn, 2047, make([]byte, 512), []int{512}, true)
	if n := ro.serve(ctx, c); n != 513 || status(c) != blkSOK || !bytes.Equal(c.out[0], img[len(img)-512:]) {
		t.Errorf("read of the last sector: written %d, status %d", n, status(c))
	}
	// Each case is laid out when it runs: they share the fake memory.
	for _, tc := range []struct {
		name   string
		c      func() chain
		status byte
	}{
		{"read past end", func() chain { return blkRequest(mem, data, blkTIn, 2047, make([]byte, 1024), []int{1024}, true) }, blkSIOErr},
		{"read at huge sector", func() chain { return blkRequest(mem, data, blkTIn, 1<<60, make([]byte, 512), []int{512}, true) }, blkSIOErr},
		{"read too long", func() chain { return blkRequest(mem, data, blkTIn, 0, make([]byte, 8192), []int{8192}, true) }, blkSOK},
		{"write read-only", func() chain { return blkRequest(mem, data, blkTOut, 0, make([]byte, 512), []int{512}, false) }, blkSIOErr},
		{"zeroes read-only", func() chain { return blkRequest(mem, data, blkTWriteZeroes, 0, make([]byte, 16), []int{16}, false) }, blkSIOErr},
		{"flush read-only", func() chain { return blkRequest(mem, data, blkTFlush, 0, nil, nil, false) }, blkSOK},
		{"discard", func() chain { return blkRequest(mem, data, 11, 0, make([]byte, 16), []int{16}, false) }, blkSUnsupp},
	} {
		c := tc.c()
		if ro.serve(ctx, c); status(c) != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, status(c), tc.status)
		}
	}
	small := newBlk(blockdev.NewMemDevice(img), false, 4096, "")
	c = blkRequest(mem, data, blkTIn, 0, make([]byte, 8192), []int{8192}, true)
	if small.serve(ctx, c); status(c) != blkSIOErr {
		t.Errorf("read longer than MaxRequest: status %d, want %d", status(c), blkSIOErr)
	}
	c = blkRequest(mem, data, blkTGetID, 0, make([]byte, 20), []int{20}, true)
	if n := ro.serve(ctx, c); n != 21 || string(bytes.TrimRight(c.out[0], "\x00")) != "serial-123" {
		t.Errorf("GET_ID: written %d, id %q", n, c.out[0])
	}
	// A chain without a status byte or header is left alone.
	if n := ro.serve(ctx, chain{in: [][]byte{make([]byte, 8)}, inLen: 8}); n != 0 {
		t.Errorf("serving a 8-byte chain wrote %d bytes", n)
	}

	ov, err := blockdev.NewOverlay(blockdev.NewMemDevice(img), filepath.Join(t.TempDir(), "cow"))
	if err != nil {
		t.Fatal(err)
	}
	defer ov.Close()
	rw := newBlk(ov, false, 1<<20, "")
	if rw.features()&featBlkRO != 0 || ro.features()&featBlkRO == 0 {
		t.Errorf("features: writable %#x, read-only %#x", rw.features(), ro.features())
	}
	if newBlk(ov, true, 1<<20, "").features()&featBlkRO == 0 {
		t.Error("a writable device served read-only lacks VIRTIO_BLK_F_RO")
	}
	payload := bytes.Repeat([]byte("lode"), 256)
	c = blkRequest(mem, data, blkTOut, 8, payload, []int{512, 512}, false)
	if n := rw.serve(ctx, c); n != 1 || status(c) != blkSOK {
		t.Errorf("write: written %d, status %d", n, status(c))
	}
	zero := binary.LittleEndian.AppendUint64(nil, 9)
	zero = binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(zero, 1), 0)
	c = blkRequest(mem, data, blkTWriteZeroes, 0, zero, []int{16}, false)
	if rw.serve(ctx, c); status(c) != blkSOK {
		t.Errorf("write zeroes: status %d", status(c))
	}
	c = blkRequest(mem, data, blkTFlush, 0, nil, nil, false)
	if rw.serve(ctx, c); status(c) != blkSOK {
		t.Errorf("flush: status %d", status(c))
	}
	got := make([]byte, 1024)
	if _, err := ov.ReadAt(ctx, got, 8*512); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, payload[:512]...), make([]byte, 512)...)
	if !bytes.Equal(got, want) {
		t.Error("the overlay does not hold the write then the zeroes")
	}
	if i := 8 * 512; img[i] != byte(i*7) {
		t.Error("the base changed")
	}
}

func TestConfig(t *testing.T) {
	c := newBlk(blockdev.NewMemDevice(make([]byte, 1<<20)), true, 1<<20, "").config()
	got := []uint64{binary.LittleEndian.Uint64(c), uint64(binary.LittleEndian.Uint32(c[12:])),
		uint64(binary.LittleEndian.Uint32(c[20:])), uint64(c[24]), uint64(binary.LittleEndian.Uint16(c[34:]))}
	if diff := cmp.Diff([]uint64{2048, segMax, 512, 3, 1}, got); diff != "" {
		t.Errorf("capacity, seg_max, blk_size, physical_block_exp, num_queues (-want +got):\n%s", diff)
	}
}
