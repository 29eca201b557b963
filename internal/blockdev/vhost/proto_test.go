package vhost

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// encode builds a front-end message: header then payload.
func encode(req request, flags uint32, payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(req))
	b = binary.LittleEndian.AppendUint32(b, flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(index, num uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, index), num)
}

func addrPayload(a vringAddr) []byte {
	b := state(a.Index, a.Flags)
	for _, v := range []uint64{a.Desc, a.Used, a.Avail, a.Log} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func memTablePayload(regs ...memRegion) []byte {
	b := state(uint32(len(regs)), 0)
	for _, r := range regs {
		for _, v := range []uint64{r.GuestAddr, r.Size, r.UserAddr, r.MmapOffset} {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
	}
	return b
}

func configPayload(off, size, flags uint32, data []byte) []byte {
	b := binary.LittleEndian.AppendUint32(state(off, size), flags)
	return append(b, data...)
}

func TestParseMessage(t *testing.T) {
	reg := memRegion{GuestAddr: 0, Size: 1 << 20, UserAddr: 0x7f0000000000, MmapOffset: 0}
	addr := vringAddr{Index: 0, Desc: 0x1000, Used: 0x3000, Avail: 0x2000}
	for _, tc := range []struct {
		name string
		b    []byte
		nfds int
		want message
		err  bool
	}{
		{"get features", encode(reqGetFeatures, 1, nil), 0, message{Req: reqGetFeatures, Flags: 1}, false},
		{"set features", encode(reqSetFeatures, 1, u64(1<<32)), 0, message{Req: reqSetFeatures, Flags: 1, U64: 1 << 32}, false},
		{"need reply", encode(reqSetOwner, 1|flagNeedReply, nil), 0, message{Req: reqSetOwner, Flags: 9}, false},
		{"vring num", encode(reqSetVringNum, 1, state(0, 128)), 0, message{Req: reqSetVringNum, Flags: 1, Num: 128}, false},
		{"vring addr", encode(reqSetVringAddr, 1, addrPayload(addr)), 0, message{Req: reqSetVringAddr, Flags: 1, Addr: addr}, false},
		{"kick with fd", encode(reqSetVringKick, 1, u64(0)), 1, message{Req: reqSetVringKick, Flags: 1}, false},
		{"call without fd", encode(reqSetVringCall, 1, u64(vringNoFD|0)), 0, message{Req: reqSetVringCall, Flags: 1, U64: vringNoFD}, false},
		{"mem table", encode(reqSetMemTable, 1, memTablePayload(reg)), 1, message{Req: reqSetMemTable, Flags: 1, Regions: []memRegion{reg}}, false},
		{"get config", encode(reqGetConfig, 1, configPayload(0, 4, 0, make([]byte, 4))), 0,
			message{Req: reqGetConfig, Flags: 1, CfgSize: 4, CfgData: make([]byte, 4)}, false},
		{"unknown", encode(99, 1, []byte{1, 2}), 0, message{Req: 99, Flags: 1}, false},

		{"short header", []byte{1, 0, 0, 0, 1}, 0, message{}, true},
		{"version 2", encode(reqGetFeatures, 2, nil), 0, message{}, true},
		{"reply flag", encode(reqGetFeatures, 1|flagReply, nil), 0, message{}, true},
		{"size lies", append(encode(reqSetFeatures, 1, u64(1)), 0), 0, message{}, true},
		{"short u64", encode(reqSetFeatures, 1, []byte{1, 2, 3}), 0, message{}, true},
		{"kick missing fd", encode(reqSetVringKick, 1, u64(0)), 0, message{}, true},
		{"extra fd", encode(reqGetFeatures, 1, nil), 1, message{}, true},
		{"mem table zero regions", encode(reqSetMemTable, 1, memTablePayload()), 0, message{}, true},
		{"mem table nine regions", encode(reqSetMemTable, 1, memTablePayload(reg, reg, reg, reg, reg, reg, reg, reg, reg)), 9, message{}, true},
		{"mem table fd count", encode(reqSetMemTable, 1, memTablePayload(reg, reg)), 1, message{}, true},
		{"mem table truncated", encode(reqSetMemTable, 1, memTablePayload(reg)[:20]), 1, message{}, true},
		{"mem table wraps", encode(reqSetMemTable, 1, memTablePayload(memRegion{GuestAddr: ^uint64(0), Size: 2})), 1, message{}, true},
		{"mem table empty region", encode(reqSetMemTable, 1, memTablePayload(memRegion{})), 1, message{}, true},
		{"config too big", encode(reqGetConfig, 1, configPayload(0, 300, 0, make([]byte, 300))), 0, message{}, true},
		{"config past end", encode(reqGetConfig, 1, configPayload(250, 10, 0, make([]byte, 10))), 0, message{}, true},
		{"config size lies", encode(reqGetConfig, 1, configPayload(0, 8, 0, make([]byte, 4))), 0, message{}, true},
		{"addr short", encode(reqSetVringAddr, 1, addrPayload(addr)[:32]), 0, message{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMessage(tc.b, tc.nfds)
			if tc.err {
				if !errors.Is(err, ErrProtocol) {
					t.Errorf("parseMessage = %+v, %v; want ErrProtocol", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseMessage: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReplies(t *testing.T) {
	got := replyU64(reqGetFeatures, 0x1_4000_0000)
	want := []byte{1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x40, 1, 0, 0, 0}
	if !cmp.Equal(got, want) {
		t.Errorf("replyU64 = %v, want %v", got, want)
	}
	m := message{Req: reqGetConfig, CfgOffset: 0, CfgSize: 2, CfgFlags: 0}
	got = replyConfig(m, []byte{7, 8})
	want = []byte{24, 0, 0, 0, 5, 0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 8}
	if !cmp.Equal(got, want) {
		t.Errorf("replyConfig = %v, want %v", got, want)
	}
}

func FuzzParseMessage(f *testing.F) {
	reg := memRegion{Size: 1 << 20, UserAddr: 0x7f0000000000}
	f.Add(encode(reqGetFeatures, 1, nil), 0)
	f.Add(encode(reqSetVringAddr, 1, addrPayload(vringAddr{Desc: 1, Used: 2, Avail: 3})), 0)
	f.Add(encode(reqSetMemTable, 1, memTablePayload(reg, reg)), 2)
	f.Add(encode(reqGetConfig, 1, configPayload(0, 60, 0, make([]byte, 60))), 0)
	f.Add(encode(reqSetVringKick, 1, u64(0)), 1)
	f.Fuzz(func(t *testing.T, b []byte, nfds int) {
		m, err := parseMessage(b, nfds)
		if err != nil {
			return
		}
		if len(m.Regions) > maxRegions || len(m.Regions) != 0 && len(m.Regions) != nfds {
			t.Fatalf("%d regions with %d fds", len(m.Regions), nfds)
		}
		if uint64(m.CfgOffset)+uint64(len(m.CfgData)) > maxConfigSize || uint32(len(m.CfgData)) != m.CfgSize && m.Req == reqGetConfig {
			t.Fatalf("config %d bytes at %d, size %d", len(m.CfgData), m.CfgOffset, m.CfgSize)
		}
		for _, r := range m.Regions {
			if r.Size == 0 || r.GuestAddr+r.Size < r.GuestAddr {
				t.Fatalf("region %+v", r)
			}
		}
	})
}
