package cachenode

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// Fleet authentication (issue #19). With ServerConfig.TLS set, every
// connection is TLS with a client certificate that the configuration
// checks (certs.Reloader.ServerConfig(certs.RoleWorker): signed by the
// fleet CA, role worker). The handshake runs before the first request
// byte is read, so a client without a valid worker certificate never gets
// a request parsed, a body read, a shard served or a lease granted. Only
// workers hold worker certificates, so PUTs and leases come from workers.

// ErrUnauthenticated: the node would serve a network address without TLS.
var ErrUnauthenticated = errors.New("cache node reachable from the network without authentication")

// CheckListen refuses (ErrUnauthenticated) a listen address other than
// loopback unless the node requires client certificates (withTLS) or the
// operator said it may be unauthenticated (insecure, --insecure-no-tls).
func CheckListen(addr string, withTLS, insecure bool) error {
	if withTLS || insecure || isLoopback(addr) {
		return nil
	}
	return fmt.Errorf("listening on %s: %w: anyone who can connect could replace shards and take origin leases; give --tls-cert, --tls-key and --tls-ca (lode cache certs), listen on loopback, or pass --insecure-no-tls", addr, ErrUnauthenticated)
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// handshake runs tc's TLS handshake within the header timeout; a failure
// (no, forged or wrong-role certificate) is counted and logged, and the
// connection is closed by the caller.
func (s *Server) handshake(tc *tls.Conn) bool {
	ctx, cancel := context.WithTimeout(context.Background(), s.headerTimeout)
	defer cancel()
	tc.SetDeadline(time.Now().Add(s.headerTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		s.tlsRefused.Inc()
		s.log.Debug("refused a connection at the TLS handshake", slog.String("remote", tc.RemoteAddr().String()), slog.Any("err", err))
		return false
	}
	tc.SetDeadline(time.Time{})
	return true
}

// handedTLS is a TLS connection handed to net/http: reads start with the
// bytes the fast path had buffered (already decrypted).
type handedTLS struct {
	net.Conn
	r *bufio.Reader
}

func (c *handedTLS) Read(p []byte) (int, error) { return c.r.Read(p) }

// WriteTo must not bypass the buffered bytes.
func (c *handedTLS) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c.r})
}
