package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// request is a vhost-user front-end message type.
type request uint32

// The requests QEMU's vhost-user-blk front-end sends (vhost-user.rst,
// "Front-end message types"). Every other number is answered as unknown.
const (
	reqGetFeatures         request = 1
	reqSetFeatures         request = 2
	reqSetOwner            request = 3
	reqResetOwner          request = 4
	reqSetMemTable         request = 5
	reqSetLogBase          request = 6
	reqSetLogFD            request = 7
	reqSetVringNum         request = 8
	reqSetVringAddr        request = 9
	reqSetVringBase        request = 10
	reqGetVringBase        request = 11
	reqSetVringKick        request = 12
	reqSetVringCall        request = 13
	reqSetVringErr         request = 14
	reqGetProtocolFeatures request = 15
	reqSetProtocolFeatures request = 16
	reqGetQueueNum         request = 17
	reqSetVringEnable      request = 18
	reqGetConfig           request = 24
	reqSetConfig           request = 25
	reqGetMaxMemSlots      request = 36
)

func (r request) String() string {
	names := map[request]string{
		reqGetFeatures: "GET_FEATURES", reqSetFeatures: "SET_FEATURES", reqSetOwner: "SET_OWNER",
		reqResetOwner: "RESET_OWNER", reqSetMemTable: "SET_MEM_TABLE", reqSetLogBase: "SET_LOG_BASE",
		reqSetLogFD: "SET_LOG_FD", reqSetVringNum: "SET_VRING_NUM", reqSetVringAddr: "SET_VRING_ADDR",
		reqSetVringBase: "SET_VRING_BASE", reqGetVringBase: "GET_VRING_BASE", reqSetVringKick: "SET_VRING_KICK",
		reqSetVringCall: "SET_VRING_CALL", reqSetVringErr: "SET_VRING_ERR",
		reqGetProtocolFeatures: "GET_PROTOCOL_FEATURES", reqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
		reqGetQueueNum: "GET_QUEUE_NUM", reqSetVringEnable: "SET_VRING_ENABLE", reqGetConfig: "GET_CONFIG",
		reqSetConfig: "SET_CONFIG", reqGetMaxMemSlots: "GET_MAX_MEM_SLOTS",
	}
	if n, ok := names[r]; ok {
		return n
	}
	return fmt.Sprintf("request(%d)", uint32(r))
}

// Header flags and limits.
const (
	headerSize      = 12
	flagVersion     = 0x1
	flagVersionMask = 0x3
	flagReply       = 0x4
	flagNeedReply   = 0x8

	// maxPayload bounds a message body: the largest we accept is
	// SET_MEM_TABLE with 8 regions (264 bytes) or a 256-byte config.
	maxPayload = 4096
	// maxRegions is VHOST_MEMORY_BASELINE_NREGIONS: without
	// CONFIGURE_MEM_SLOTS a memory table has at most 8 regions.
	maxRegions = 8
	// maxConfigSize is VHOST_USER_MAX_CONFIG_SIZE.
	maxConfigSize = 256
	// configHeaderSize is offset, size and flags of a config message.
	configHeaderSize = 12
	// vringFDIndexMask and vringNoFD split the u64 of SET_VRING_KICK,
	// CALL and ERR: the queue index, and "no file descriptor (poll)".
	vringFDIndexMask = 0xff
	vringNoFD        = 0x100
)

// Feature bits of the vhost-user protocol (VHOST_USER_PROTOCOL_F_*).
const (
	protoMQ       = 1 << 0
	protoReplyAck = 1 << 3
	protoConfig   = 1 << 9
)

// ErrProtocol reports a front-end message that breaks the protocol: the
// connection is closed.
var ErrProtocol = errors.New("vhost-user protocol error")

// memRegion is one VhostUserMemoryRegion of SET_MEM_TABLE.
type memRegion struct {
	GuestAddr, Size, UserAddr, MmapOffset uint64
}

// vringAddr is the payload of SET_VRING_ADDR: where the descriptor table,
// used and available rings are in the front-end's address space.
type vringAddr struct {
	Index, Flags           uint32
	Desc, Used, Avail, Log uint64
}

// message is one decoded front-end message. Which payload field is set
// depends on Req.
type message struct {
	Req   request
	Flags uint32
	// U64: SET_FEATURES, SET_PROTOCOL_FEATURES, SET_LOG_BASE, and
	// SET_VRING_KICK, CALL, ERR (index in the low byte, vringNoFD).
	U64 uint64
	// Index and Num: the vring state of SET_VRING_NUM, SET_VRING_BASE,
	// GET_VRING_BASE and SET_VRING_ENABLE.
	Index, Num uint32
	Addr       vringAddr
	Regions    []memRegion
	// Config: GET_CONFIG and SET_CONFIG.
	CfgOffset, CfgSize, CfgFlags uint32
	CfgData                      []byte
}

func (m message) needReply() bool { return m.Flags&flagNeedReply != 0 }

// messageSize returns the payload size a header announces, or an error
// for a header that cannot start a valid message.
func messageSize(hdr []byte) (uint32, error) {
	if len(hdr) < headerSize {
		return 0, fmt.Errorf("%w: short header (%d bytes)", ErrProtocol, len(hdr))
	}
	flags := binary.LittleEndian.Uint32(hdr[4:])
	if flags&flagVersionMask != flagVersion {
		return 0, fmt.Errorf("%w: version %d", ErrProtocol, flags&flagVersionMask)
	}
	size := binary.LittleEndian.Uint32(hdr[8:])
	if size > maxPayload {
		return 0, fmt.Errorf("%w: payload of %d bytes", ErrProtocol, size)
	}
	return size, nil
}

// parseMessage decodes b, one whole message (header and payload), that
// arrived with nfds file descriptors. It checks every length against the
// request type and the descriptor count against what the request carries;
// it never trusts a count in the payload beyond len(b).
func parseMessage(b []byte, nfds int) (message, error) {
	size, err := messageSize(b)
	if err != nil {
		return message{}, err
	}
	m := message{Req: request(binary.LittleEndian.Uint32(b)), Flags: binary.LittleEndian.Uint32(b[4:])}
	if m.Flags&flagReply != 0 {
		return m, fmt.Errorf("%w: %s has the reply flag", ErrProtocol, m.Req)
	}
	p := b[headerSize:]
	if uint32(len(p)) != size {
		return m, fmt.Errorf("%w: %s announces %d payload bytes, has %d", ErrProtocol, m.Req, size, len(p))
	}
	wantFDs := 0
	short := func(n int) error {
		return fmt.Errorf("%w: %s payload of %d bytes, want %d", ErrProtocol, m.Req, len(p), n)
	}
	switch m.Req {
	case reqSetFeatures, reqSetProtocolFeatures:
		if len(p) != 8 {
			return m, short(8)
		}
		m.U64 = binary.LittleEndian.Uint64(p)
	case reqSetLogBase:
		if len(p) < 8 {
			return m, short(8)
		}
		m.U64 = binary.LittleEndian.Uint64(p)
		wantFDs = 1
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		if len(p) != 8 {
			return m, short(8)
		}
		m.U64 = binary.LittleEndian.Uint64(p)
		if m.U64&vringNoFD == 0 {
			wantFDs = 1
		}
		m.Index = uint32(m.U64 & vringFDIndexMask)
	case reqSetVringNum, reqSetVringBase, reqGetVringBase, reqSetVringEnable:
		if len(p) != 8 {
			return m, short(8)
		}
		m.Index, m.Num = binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])
	case reqSetVringAddr:
		if len(p) != 40 {
			return m, short(40)
		}
		m.Addr = vringAddr{
			Index: binary.LittleEndian.Uint32(p), Flags: binary.LittleEndian.Uint32(p[4:]),
			Desc: binary.LittleEndian.Uint64(p[8:]), Used: binary.LittleEndian.Uint64(p[16:]),
			Avail: binary.LittleEndian.Uint64(p[24:]), Log: binary.LittleEndian.Uint64(p[32:]),
		}
		m.Index = m.Addr.Index
	case reqSetMemTable:
		if len(p) < 8 {
			return m, short(8)
		}
		n := binary.LittleEndian.Uint32(p)
		if n == 0 || n > maxRegions {
			return m, fmt.Errorf("%w: SET_MEM_TABLE with %d regions", ErrProtocol, n)
		}
		if len(p) < 8+32*int(n) {
			return m, short(8 + 32*int(n))
		}
		for i := range int(n) {
			r := p[8+32*i:]
			reg := memRegion{
				GuestAddr: binary.LittleEndian.Uint64(r), Size: binary.LittleEndian.Uint64(r[8:]),
				UserAddr: binary.LittleEndian.Uint64(r[16:]), MmapOffset: binary.LittleEndian.Uint64(r[24:]),
			}
			if reg.Size == 0 || reg.GuestAddr+reg.Size < reg.GuestAddr || reg.UserAddr+reg.Size < reg.UserAddr ||
				reg.MmapOffset+reg.Size < reg.MmapOffset || reg.MmapOffset+reg.Size > 1<<47 {
				return m, fmt.Errorf("%w: SET_MEM_TABLE region %d %+v", ErrProtocol, i, reg)
			}
			m.Regions = append(m.Regions, reg)
		}
		wantFDs = int(n)
	case reqGetConfig, reqSetConfig:
		if len(p) < configHeaderSize {
			return m, short(configHeaderSize)
		}
		m.CfgOffset, m.CfgSize, m.CfgFlags = binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]), binary.LittleEndian.Uint32(p[8:])
		if m.CfgSize > maxConfigSize || uint64(m.CfgOffset)+uint64(m.CfgSize) > maxConfigSize {
			return m, fmt.Errorf("%w: %s of %d bytes at %d", ErrProtocol, m.Req, m.CfgSize, m.CfgOffset)
		}
		if len(p) != configHeaderSize+int(m.CfgSize) {
			return m, short(configHeaderSize + int(m.CfgSize))
		}
		m.CfgData = p[configHeaderSize:]
	case reqSetLogFD:
		wantFDs = 1
	}
	if nfds != wantFDs {
		return m, fmt.Errorf("%w: %s with %d file descriptors, want %d", ErrProtocol, m.Req, nfds, wantFDs)
	}
	return m, nil
}

// appendHeader appends a reply header for req with a payload of size bytes.
func appendHeader(b []byte, req request, size int) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(req))
	b = binary.LittleEndian.AppendUint32(b, flagVersion|flagReply)
	return binary.LittleEndian.AppendUint32(b, uint32(size))
}

// replyU64 is a reply carrying one u64 (features, queue count, ack).
func replyU64(req request, v uint64) []byte {
	return binary.LittleEndian.AppendUint64(appendHeader(nil, req, 8), v)
}

// replyState is a reply carrying a vring state (GET_VRING_BASE).
func replyState(req request, index, num uint32) []byte {
	b := binary.LittleEndian.AppendUint32(appendHeader(nil, req, 8), index)
	return binary.LittleEndian.AppendUint32(b, num)
}

// replyConfig is a GET_CONFIG reply: the request's offset, size and flags,
// then data (len(data) == size).
func replyConfig(m message, data []byte) []byte {
	b := appendHeader(nil, m.Req, configHeaderSize+len(data))
	b = binary.LittleEndian.AppendUint32(b, m.CfgOffset)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	b = binary.LittleEndian.AppendUint32(b, m.CfgFlags)
	return append(b, data...)
}
