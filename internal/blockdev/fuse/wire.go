package fuse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// wire.go is the part of the FUSE protocol the one-file server speaks:
// request parsing (parseRequest, fuzzed by FuzzParseRequest) and reply
// encoding, with go-fuse's exported protocol structs as the layouts.

// Opcodes (include/uapi/linux/fuse.h); go-fuse keeps its own unexported.
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opOpen        = 14
	opRead        = 15
	opStatfs      = 17
	opRelease     = 18
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opAccess      = 34
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
)

const (
	kernelMajor = 7
	minMinor    = 13 // fuse_attr with blksize, 40-byte fuse_read_in
	ourMinor    = 31 // nothing above it is used; the kernel takes the lower of the two
	inHeaderLen = 40 // fuse_in_header
	outHeadLen  = 16 // fuse_out_header
	readInLen   = 40 // fuse_read_in
	initInLen   = 16 // major, minor, max_readahead, flags (the rest is optional)
)

var ne = binary.NativeEndian

// request is one parsed FUSE request.
type request struct {
	op     uint32
	unique uint64
	node   uint64
	name   string // LOOKUP

	// READ, READDIR
	fh     uint64
	offset int64
	size   uint32

	flags uint32 // OPEN: open flags; INIT: flags

	// INIT
	major, minor, maxReadAhead uint32

	target uint64 // INTERRUPT: the interrupted request
}

// errShort reports a request shorter than its opcode's fixed part.
var errShort = errors.New("fuse: short request")

// parseRequest decodes one request as read from /dev/fuse. It never
// panics and never keeps b: the result owns its data.
func parseRequest(b []byte) (request, error) {
	var r request
	if len(b) < inHeaderLen {
		return r, fmt.Errorf("parsing a FUSE request of %d bytes: %w", len(b), errShort)
	}
	length := ne.Uint32(b[0:])
	if int(length) != len(b) {
		return r, fmt.Errorf("parsing a FUSE request: header says %d bytes, read %d", length, len(b))
	}
	r.op = ne.Uint32(b[4:])
	r.unique = ne.Uint64(b[8:])
	r.node = ne.Uint64(b[16:])
	body := b[inHeaderLen:]
	need := func(n int) error {
		if len(body) < n {
			return fmt.Errorf("parsing FUSE opcode %d (%d-byte body, want %d): %w", r.op, len(body), n, errShort)
		}
		return nil
	}
	switch r.op {
	case opLookup:
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return r, fmt.Errorf("parsing FUSE LOOKUP: name not NUL-terminated")
		}
		r.name = string(body[:i])
	case opRead, opReaddir:
		if err := need(readInLen); err != nil {
			return r, err
		}
		r.fh = ne.Uint64(body[0:])
		off := ne.Uint64(body[8:])
		if off > 1<<62 {
			return r, fmt.Errorf("parsing FUSE READ: offset %d out of range", off)
		}
		r.offset = int64(off)
		r.size = ne.Uint32(body[16:])
	case opOpen, opOpendir:
		if err := need(8); err != nil {
			return r, err
		}
		r.flags = ne.Uint32(body[0:])
	case opInit:
		if err := need(initInLen); err != nil {
			return r, err
		}
		r.major = ne.Uint32(body[0:])
		r.minor = ne.Uint32(body[4:])
		r.maxReadAhead = ne.Uint32(body[8:])
		r.flags = ne.Uint32(body[12:])
	case opInterrupt:
		if err := need(8); err != nil {
			return r, err
		}
		r.target = ne.Uint64(body[0:])
	}
	return r, nil
}

// noReply reports opcodes the kernel expects no answer to.
func noReply(op uint32) bool {
	return op == opForget || op == opBatchForget || op == opInterrupt
}

// appendOutHeader appends a fuse_out_header for a reply of bodyLen bytes.
func appendOutHeader(b []byte, unique uint64, errno int32, bodyLen int) []byte {
	return appendStruct(b, gofuse.OutHeader{Length: uint32(outHeadLen + bodyLen), Status: -errno, Unique: unique})
}

// appendStruct appends v (a fixed-size protocol struct) in native order.
func appendStruct(b []byte, v any) []byte {
	out, err := binary.Append(b, ne, v)
	if err != nil {
		panic(fmt.Sprintf("encoding %T: %v", v, err)) // a programming error: v is one of ours
	}
	return out
}

// appendDirent appends one fuse_dirent, padded to 8 bytes.
func appendDirent(b []byte, ino, off uint64, typ uint32, name string) []byte {
	b = ne.AppendUint64(b, ino)
	b = ne.AppendUint64(b, off)
	b = ne.AppendUint32(b, uint32(len(name)))
	b = ne.AppendUint32(b, typ)
	b = append(b, name...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

func direntLen(name string) int { return (24 + len(name) + 7) &^ 7 }
