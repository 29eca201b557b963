package nbd

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// ErrUnauthenticated: an export would be reachable from the network
// without TLS (CheckListen).
var ErrUnauthenticated = errors.New("nbd: export reachable from the network without authentication")

// IsLoopback reports whether a listen address (HOST:PORT or unix:PATH) is
// reachable only from this machine: a unix socket, or a host that is a
// loopback IP or "localhost". An empty host (":10809") means every
// interface.
func IsLoopback(addr string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
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

// CheckListen refuses, with ErrUnauthenticated, an NBD export on a TCP
// address other than loopback unless it requires TLS with client
// certificates (withTLS) or the operator said it may be unauthenticated
// (insecure: the --insecure-no-tls flag). NBD itself has no
// authentication: anyone who can connect reads the disk.
func CheckListen(addr string, withTLS, insecure bool) error {
	if withTLS || insecure || IsLoopback(addr) {
		return nil
	}
	return fmt.Errorf("listening on %s: %w: give --tls-cert, --tls-key and --tls-ca (clients then need a certificate from that CA), listen on loopback or a unix socket, or pass --insecure-no-tls", addr, ErrUnauthenticated)
}
