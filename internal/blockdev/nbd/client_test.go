package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
)

// testClient is a minimal synchronous NBD client for tests and benchmarks:
// fixed newstyle, NBD_OPT_GO, simple replies.
type testClient struct {
	c     net.Conn
	br    *bufio.Reader
	size  uint64
	flags uint16
	next  uint64
}

func (c *testClient) readOptReply() (opt, typ uint32, data []byte, err error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, 0, nil, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != repMagic {
		return 0, 0, nil, fmt.Errorf("option reply magic %#x", m)
	}
	data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	_, err = io.ReadFull(c.br, data)
	return binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), data, err
}

func (c *testClient) sendOpt(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := c.c.Write(append(b, data...))
	return err
}

// dialNBD connects and completes the greeting (not the options).
func dialNBD(tb testing.TB, network, addr string) *testClient {
	tb.Helper()
	nc, err := net.Dial(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	c := &testClient{c: nc, br: bufio.NewReaderSize(nc, 1<<20)}
	var g [18]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		tb.Fatalf("reading greeting: %v", err)
	}
	if binary.BigEndian.Uint64(g[:]) != nbdMagic || binary.BigEndian.Uint64(g[8:]) != optMagic {
		tb.Fatalf("greeting = %x", g)
	}
	if _, err := nc.Write(binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)); err != nil {
		tb.Fatal(err)
	}
	return c
}

// goExport sends NBD_OPT_GO and returns the last reply type (repAck on
// success, an error reply otherwise).
func (c *testClient) goExport(name string) (uint32, error) {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = binary.BigEndian.AppendUint16(d, 0)
	if err := c.sendOpt(optGo, d); err != nil {
		return 0, err
	}
	for {
		_, typ, data, err := c.readOptReply()
		if err != nil {
			return 0, err
		}
		if typ == repInfo && binary.BigEndian.Uint16(data) == infoExport {
			c.size = binary.BigEndian.Uint64(data[2:])
			c.flags = binary.BigEndian.Uint16(data[10:])
		}
		if typ != repInfo {
			return typ, nil
		}
	}
}

// do sends one request (with payload for writes) and returns the reply's
// errno and, for successful reads, its data in dst.
func (c *testClient) do(typ uint16, off uint64, length uint32, payload, dst []byte) (uint32, error) {
	c.next++
	b := request{typ: typ, cookie: c.next, offset: off, length: length}.appendTo(make([]byte, 0, requestSize+len(payload)))
	if _, err := c.c.Write(append(b, payload...)); err != nil {
		return 0, err
	}
	var h [16]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, err
	}
	if m := binary.BigEndian.Uint32(h[:]); m != simpleMagic {
		return 0, fmt.Errorf("reply magic %#x", m)
	}
	if ck := binary.BigEndian.Uint64(h[8:]); ck != c.next {
		return 0, fmt.Errorf("reply cookie %d, want %d", ck, c.next)
	}
	errno := binary.BigEndian.Uint32(h[4:])
	if errno == 0 && typ == cmdRead {
		if _, err := io.ReadFull(c.br, dst[:length]); err != nil {
			return 0, err
		}
	}
	return errno, nil
}
