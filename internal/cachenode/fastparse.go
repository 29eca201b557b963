package cachenode

import (
	"bytes"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
)

// maxFastHead bounds the request head (request line and headers) the fast
// path reads; a longer head goes to net/http, whose own limit is 1 MB.
const maxFastHead = 4096

// parseResult says what to do with the bytes read so far.
type parseResult int

const (
	// parseDecline: not a request the fast path serves exactly (another
	// method or path, an unusual header, anything malformed); net/http
	// gets the connection with every byte read so far.
	parseDecline parseResult = iota
	// parseMore: a prefix of a head the fast path may serve; read more.
	parseMore
	// parseOK: a complete head of a shard GET or PUT.
	parseOK
)

// fastRequest is a parsed shard GET or PUT.
type fastRequest struct {
	put  bool // PUT (with a body of length bytes), else GET
	name chunk.Name
	idx  int // -1: every shard of the chunk (GET only)
	// length is a PUT's Content-Length (at most MaxShardSize).
	length int64
	// close is set by "Connection: close": answer, then close.
	close bool
}

// parseFastRequest parses the request head at the start of b:
//
//	GET /v1/shards/{chunk}[/{index}] HTTP/1.1 CRLF
//	*(header-name ":" OWS value CRLF)
//	CRLF
//
// or the same with PUT /v1/shards/{chunk}/{index} and exactly one
// Content-Length of at most MaxShardSize (plain digits); with exactly one
// Host header (non-empty, of host-name characters), no Transfer-Encoding,
// Expect, Upgrade, TE or Trailer header (nor Content-Length on a GET), an
// optional "Connection: close" or "Connection: keep-alive", and any other
// headers, which are ignored. The path has the single spelling
// ParseShardPath accepts. Every line ends in CRLF (a bare LF is declined:
// net/http accepts it). It returns parseOK and the head's length, parseMore
// while b is a strict prefix of a head (shorter than maxFastHead) whose
// complete lines are all accepted, or parseDecline as soon as a complete line
// is not. It reads only b and allocates nothing.
//
// It accepts a subset of what net/http accepts and treats alike: anything it
// does not fully understand is declined, not answered with an error, so the
// fast path never changes how a request is answered, nor when
// (FuzzParseFastRequest checks both against http.ReadRequest).
func parseFastRequest(b []byte) (req fastRequest, n int, res parseResult) {
	line := "GET " + fleetproto.ShardPrefix
	if len(b) > 0 && b[0] == 'P' {
		line = "PUT " + fleetproto.ShardPrefix
		req.put = true
	}
	if len(b) < len(line) {
		if bytes.HasPrefix([]byte(line), b) {
			return req, 0, parseMore
		}
		return req, 0, parseDecline
	}
	if string(b[:len(line)]) != line {
		return req, 0, parseDecline
	}
	// One line at a time, as net/http reads them: a complete line the fast
	// path does not serve is declined at once (net/http then answers it, or
	// refuses it, without waiting for the rest of the head), and parseMore
	// only ever means that net/http too would still be reading the head.
	// Every line must end in CRLF: net/http also ends lines at a bare LF, so
	// a head of bare-LF lines is complete for it; such requests go to it.
	hosts, lengths := 0, 0
	for pos, first := 0, true; ; first = false {
		i := bytes.IndexByte(b[pos:], '\n')
		if i < 0 {
			if len(b) >= maxFastHead {
				return req, 0, parseDecline
			}
			return req, 0, parseMore
		}
		eol := pos + i
		if eol+1 > maxFastHead || i == 0 || b[eol-1] != '\r' {
			return req, 0, parseDecline
		}
		ln := b[pos : eol-1]
		pos = eol + 1
		if first { // request line: {chunk}[/{index}] HTTP/1.1 after the prefix
			target, proto, ok := bytes.Cut(ln[len(line):], []byte(" "))
			if !ok || string(proto) != "HTTP/1.1" {
				return req, 0, parseDecline
			}
			if !parseShardTarget(target, &req) || (req.put && req.idx < 0) {
				return req, 0, parseDecline
			}
			continue
		}
		if len(ln) == 0 { // the blank line: end of the head
			if hosts != 1 || (req.put && lengths != 1) {
				return req, 0, parseDecline
			}
			return req, pos, parseOK
		}
		name, value, ok := bytes.Cut(ln, []byte(":"))
		if !ok || len(name) == 0 || !isToken(name) {
			return req, 0, parseDecline
		}
		value = trimOWS(value)
		if !isFieldValue(value) {
			return req, 0, parseDecline
		}
		switch {
		case equalFold(name, "host"):
			hosts++
			if len(value) == 0 || !isHostValue(value) {
				return req, 0, parseDecline
			}
		case equalFold(name, "connection"):
			switch {
			case equalFold(value, "close"):
				req.close = true
			case equalFold(value, "keep-alive"):
			default:
				return req, 0, parseDecline
			}
		case equalFold(name, "content-length"):
			lengths++
			l, ok := parseLength(value)
			if !req.put || !ok || l > fleetproto.MaxShardSize {
				return req, 0, parseDecline
			}
			req.length = l
		case equalFold(name, "transfer-encoding"),
			equalFold(name, "expect"), equalFold(name, "upgrade"), equalFold(name, "te"),
			equalFold(name, "trailer"):
			return req, 0, parseDecline
		}
	}
}

// parseShardTarget parses "{chunk}[/{index}]" (what follows
// shardPrefix) with the spelling ParseShardPath accepts: 64 lower-case hex
// digits, and a decimal index below MaxShards without leading zeros.
func parseShardTarget(t []byte, req *fastRequest) bool {
	if len(t) < 2*len(req.name) {
		return false
	}
	for i := range req.name {
		hi, ok1 := lowerHex(t[2*i])
		lo, ok2 := lowerHex(t[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		req.name[i] = hi<<4 | lo
	}
	t = t[2*len(req.name):]
	if len(t) == 0 {
		req.idx = -1
		return true
	}
	if t[0] != '/' || len(t) < 2 || len(t) > 3 || (t[1] == '0' && len(t) > 2) {
		return false
	}
	idx := 0
	for _, c := range t[1:] {
		if c < '0' || c > '9' {
			return false
		}
		idx = idx*10 + int(c-'0')
	}
	if idx >= fleetproto.MaxShards {
		return false
	}
	req.idx = idx
	return true
}

// parseLength parses a Content-Length value: 1 to 9 decimal digits.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// isToken reports whether b is an RFC 9110 token (a valid header name).
func isToken(b []byte) bool {
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isFieldValue accepts visible ASCII, spaces and tabs: stricter than RFC
// 9110 (no obs-text), which only means more declines.
func isFieldValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// isHostValue accepts a host name, IPv4 or bracketed IPv6 address and port.
func isHostValue(b []byte) bool {
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_':
		default:
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b with lower-case ASCII s, ignoring b's case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
