package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants from the NBD protocol document.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	repMagic      = 0x0003e889045565a9
	requestMagic  = 0x25609513
	simpleMagic   = 0x67446698
	requestSize   = 28
	optHeaderSize = 16

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8

	// Option replies.
	repAck          = 1
	repServer       = 2
	repInfo         = 3
	repErrUnsup     = 1<<31 + 1
	repErrInvalid   = 1<<31 + 3
	repErrUnknown   = 1<<31 + 6
	repErrTooBig    = 1<<31 + 9
	repErrPolicy    = 1<<31 + 2
	repErrTLSReqd   = 1<<31 + 5
	repErrShutdown  = 1<<31 + 7
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Transmission flags.
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagCanMultiConn    = 1 << 8

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6

	cmdFlagFUA = 1 << 0

	// Errors on the wire.
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108

	// maxOptionLength bounds the data of one option: names are at most
	// 4096 bytes and no option we support carries much more.
	maxOptionLength = 16 << 10
)

// Sentinel errors of the parsers; each closes the connection.
var (
	ErrBadMagic     = errors.New("nbd: bad magic")
	ErrBadHandshake = errors.New("nbd: malformed handshake")
	// ErrTLSRequired: a client asked for an export before upgrading the
	// connection with NBD_OPT_STARTTLS on a server that requires TLS.
	ErrTLSRequired = errors.New("nbd: TLS required")
)

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

// parseRequest decodes a request header. It checks only the magic: the
// command, flags and range are the server's to judge.
func parseRequest(b []byte) (request, error) {
	if len(b) != requestSize {
		return request{}, fmt.Errorf("parsing request of %d bytes: %w", len(b), ErrBadHandshake)
	}
	if m := binary.BigEndian.Uint32(b); m != requestMagic {
		return request{}, fmt.Errorf("parsing request magic %#x: %w", m, ErrBadMagic)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

func (r request) appendTo(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, requestMagic)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, r.typ)
	b = binary.BigEndian.AppendUint64(b, r.cookie)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// parseOptionHeader decodes "IHAVEOPT", option, length.
func parseOptionHeader(b []byte) (opt, length uint32, err error) {
	if len(b) != optHeaderSize {
		return 0, 0, fmt.Errorf("parsing option header of %d bytes: %w", len(b), ErrBadHandshake)
	}
	if m := binary.BigEndian.Uint64(b); m != optMagic {
		return 0, 0, fmt.Errorf("parsing option magic %#x: %w", m, ErrBadMagic)
	}
	opt, length = binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:])
	if length > maxOptionLength {
		return 0, 0, fmt.Errorf("option %d has %d bytes of data, limit %d: %w", opt, length, maxOptionLength, ErrBadHandshake)
	}
	return opt, length, nil
}

// errInvalidOption marks option data that is malformed but framed correctly:
// the server answers NBD_REP_ERR_INVALID and keeps the connection.
var errInvalidOption = errors.New("nbd: invalid option data")

// parseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO: u32 name
// length, name, u16 count, count u16 information types.
func parseInfoRequest(b []byte) (name string, infos []uint16, err error) {
	if len(b) < 4 {
		return "", nil, errInvalidOption
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n)+6 > uint64(len(b)) {
		return "", nil, errInvalidOption
	}
	name = string(b[4 : 4+n])
	rest := b[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, errInvalidOption
	}
	infos = make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, infos, nil
}

func appendOptionReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, repMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func appendSimpleReply(b []byte, errno uint32, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, simpleMagic)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}
