package lodetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"flag"
	"time"
)

// Tar programs: a compact encoding of tar layers for fuzz targets whose input is a tar.
//
// Why: a tar is at least 512 bytes a header, and Go's fuzzer minimizes every new interesting input with
// O(n²) executions for up to a minute (-fuzzminimizetime), which it does not count as executions. Fuzz
// targets fed raw tars of a few kilobytes spent their whole run minimizing (oci FuzzFlatten: 40 counted
// executions in 25 s although one takes ~15 µs). A program of a few dozen bytes minimizes at once, and
// every mutation of it is a well-formed tar that reaches the code under test rather than archive/tar's
// checksum check (the program can still corrupt a byte of the tar it has written, see TarCorrupt).
//
// A program is a sequence of operations: an op byte (low 3 bits the kind, the high bits flags), a name
// (a length byte and that many bytes) and, for TarSymlink, TarLink and TarCorrupt, a second string.
const (
	TarDir     = 0 // directory; with TarXattr an xattr
	TarReg     = 1 // regular file of n×(unit+7) bytes, n = op>>4 (see TarOptions.Unit); with TarXattr an xattr
	TarSymlink = 2 // second string: the target
	TarLink    = 3 // hard link; second string: the target
	TarLayer   = 4 // end this layer and start another; with TarGzip the ended layer is gzip-compressed
	TarCorrupt = 5 // name: one offset byte (×8), second string: one value byte; overwrites that byte of the layer so far
	TarFifo    = 6
	TarChar    = 7 // character device 1:3

	TarXattr = 0x08
	TarGzip  = 0x80
)

// MaxTarProgram is the longest program TarProgram runs; longer ones write
// nothing. Fuzz targets keep their corpus of older, larger inputs, and a
// large input that finds new coverage costs the minimizer its quadratic
// time again.
const MaxTarProgram = 512

// TarOptions bound what a program writes.
type TarOptions struct {
	Unit      int64 // file size unit (see TarReg); 0 = 1 byte
	MaxBytes  int64 // stop writing file content past this many bytes in all; 0 = 1 MiB
	MaxLayers int   // stop after this many layers; 0 = 8
}

// TarOp encodes one operation of a program (for seeds).
func TarOp(op byte, name, second string) []byte {
	b := []byte{op, byte(len(name))}
	b = append(b, name...)
	switch op & 7 {
	case TarSymlink, TarLink, TarCorrupt:
		b = append(b, byte(len(second)))
		b = append(b, second...)
	}
	return b
}

// TarProgram writes the layers program p describes. Every layer is a tar (gzip-compressed if asked),
// possibly corrupted by TarCorrupt. A program that ends inside an operation ends there.
func TarProgram(p []byte, o TarOptions) [][]byte {
	if len(p) > MaxTarProgram {
		p = nil
	}
	if o.Unit <= 0 {
		o.Unit = 1
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 20
	}
	if o.MaxLayers <= 0 {
		o.MaxLayers = 8
	}
	var (
		layers  [][]byte
		buf     bytes.Buffer
		tw      = tar.NewWriter(&buf)
		written int64
	)
	str := func() (string, bool) {
		if len(p) == 0 || int(p[0]) > len(p)-1 {
			return "", false
		}
		n := 1 + int(p[0])
		s := string(p[1:n])
		p = p[n:]
		return s, true
	}
	endLayer := func(gz bool) {
		tw.Close()
		b := bytes.Clone(buf.Bytes())
		if gz {
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			zw.Write(b)
			zw.Close()
			b = z.Bytes()
		}
		layers = append(layers, b)
		buf.Reset()
		tw = tar.NewWriter(&buf)
	}
	t0 := time.Unix(1700000000, 0)
loop:
	for len(p) > 0 && len(layers) < o.MaxLayers-1 {
		op := p[0]
		p = p[1:]
		name, ok := str()
		if !ok {
			break
		}
		h := &tar.Header{Name: name, Mode: 0o644, ModTime: t0}
		switch op & 7 {
		case TarLayer:
			endLayer(op&TarGzip != 0)
			continue
		case TarCorrupt:
			v, ok := str()
			if !ok {
				break loop
			}
			if len(name) == 0 || len(v) == 0 {
				continue
			}
			tw.Flush()
			if off := int(name[0]) * 8; off < buf.Len() {
				buf.Bytes()[off] = v[0]
			}
			continue
		case TarDir:
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case TarReg:
			h.Typeflag, h.Size = tar.TypeReg, int64(op>>4)*(o.Unit+7)
			if written+h.Size > o.MaxBytes {
				h.Size = 0
			}
			written += h.Size
		case TarSymlink, TarLink:
			h.Typeflag = tar.TypeSymlink
			if op&7 == TarLink {
				h.Typeflag = tar.TypeLink
			}
			if h.Linkname, ok = str(); !ok {
				break loop
			}
		case TarFifo:
			h.Typeflag = tar.TypeFifo
		case TarChar:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, 1, 3
		}
		if op&TarXattr != 0 && (h.Typeflag == tar.TypeDir || h.Typeflag == tar.TypeReg) {
			h.PAXRecords = map[string]string{"SCHILY.xattr.user.k": string(bytes.Repeat([]byte("v"), 1+int(op>>4)*20))}
		}
		if err := tw.WriteHeader(h); err != nil {
			continue
		}
		for n := h.Size; n > 0; {
			k := min(n, int64(len(fill)))
			tw.Write(fill[:k])
			n -= k
		}
	}
	endLayer(false)
	return layers
}

// fill is file content: not all zero (so files are not holes), the same for every file.
var fill = bytes.Repeat([]byte("lode fuzz\n"), 6554)

// BoundMinimize sets -test.fuzzminimizetime to limit (for example "200x":
// at most 200 executions per minimization) unless the command line set it.
// Call it in a fuzz target before f.Fuzz: the coordinator reads the flag
// when f.Fuzz starts. For targets whose coverage varies between runs of one
// input (goroutines and pipes make loop counts differ), every execution can
// look like new coverage, and the fuzzer then spends each one's quadratic
// minimization budget (a minute) on an input that never reproduces.
func BoundMinimize(limit string) {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.fuzzminimizetime" })
	if !set {
		flag.Set("test.fuzzminimizetime", limit)
	}
}
