package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lode-dev/lode/internal/blockdev"
)

func TestParseRequestRoundTrip(t *testing.T) {
	want := request{flags: cmdFlagFUA, typ: cmdWrite, cookie: 0xdeadbeef, offset: 1 << 40, length: 4096}
	got, err := parseRequest(want.appendTo(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("parseRequest(appendTo(%+v)) = %+v", want, got)
	}
	bad := want.appendTo(nil)
	bad[0] ^= 1
	if _, err := parseRequest(bad); err == nil {
		t.Error("parseRequest with bad magic succeeded")
	}
}

func TestParseInfoRequest(t *testing.T) {
	tests := []struct {
		name      string
		in        []byte
		wantName  string
		wantInfos []uint16
		wantErr   bool
	}{
		{"empty name no infos", []byte{0, 0, 0, 0, 0, 0}, "", []uint16{}, false},
		{"name and two infos", []byte{0, 0, 0, 2, 'h', 'i', 0, 2, 0, 3, 0, 1}, "hi", []uint16{3, 1}, false},
		{"name longer than data", []byte{0, 0, 0, 9, 'h', 'i', 0, 0}, "", nil, true},
		{"count too big", []byte{0, 0, 0, 0, 0, 5, 0, 3}, "", nil, true},
		{"trailing byte", []byte{0, 0, 0, 0, 0, 0, 1}, "", nil, true},
		{"short", []byte{0, 0}, "", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name, infos, err := parseInfoRequest(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseInfoRequest(%x) error = %v, want error %v", tc.in, err, tc.wantErr)
			}
			if err == nil && (name != tc.wantName || !cmp.Equal(infos, tc.wantInfos)) {
				t.Errorf("parseInfoRequest(%x) = %q, %v, want %q, %v", tc.in, name, infos, tc.wantName, tc.wantInfos)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add(request{typ: cmdRead, cookie: 1, offset: 4096, length: 512}.appendTo(nil))
	f.Add(make([]byte, requestSize))
	f.Add([]byte{0x25, 0x60, 0x95})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		if got := r.appendTo(nil); !bytes.Equal(got, b) {
			t.Fatalf("appendTo(parseRequest(%x)) = %x", b, got)
		}
	})
}

func FuzzParseInfoRequest(f *testing.F) {
	f.Add([]byte{0, 0, 0, 2, 'h', 'i', 0, 1, 0, 3})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, infos, err := parseInfoRequest(b)
		if err == nil && 4+len(name)+2+2*len(infos) != len(b) {
			t.Fatalf("parseInfoRequest(%x) accepted %d name bytes and %d infos", b, len(name), len(infos))
		}
	})
}

// FuzzHandshake drives a whole server connection with arbitrary client
// bytes: it must not panic, must not read more than it is given, and must
// close the connection (or wait for more) without growing memory.
func FuzzHandshake(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
	opt := func(o uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, optMagic)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	goData := []byte{0, 0, 0, 1, 'x', 0, 1, 0, 3}
	f.Add(cat(flags, opt(optList, nil), opt(optAbort, nil)))
	f.Add(cat(flags, opt(optGo, goData), request{typ: cmdRead, length: 16}.appendTo(nil), request{typ: cmdDisc}.appendTo(nil)))
	f.Add(cat(flags, opt(optExportName, []byte("x")), request{typ: cmdWrite, length: 4}.appendTo(nil), []byte{1, 2, 3, 4}))
	f.Add(cat(flags, opt(optStructuredReply, nil), opt(99, []byte{1, 2, 3})))
	f.Add(cat(flags, opt(optGo, goData), request{typ: cmdRead, offset: 1 << 62, length: 1 << 31}.appendTo(nil)))
	f.Add([]byte("garbage"))
	dev := blockdev.NewMemDevice(make([]byte, 64<<10))
	s := NewServer(map[string]Export{"x": {Device: dev}}, Config{MaxRequest: 1 << 20, HandshakeTimeout: time.Second})
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.ServeConn(context.Background(), server)
		}()
		go io.Copy(io.Discard, client)
		client.SetDeadline(time.Now().Add(2 * time.Second))
		client.Write(in)
		// Whatever the server thinks, hanging up must end the connection.
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("server connection still running 5 s after client closed (input %x)", in)
		}
	})
}
