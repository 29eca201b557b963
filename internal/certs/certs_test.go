package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"
)

// TestReloadOnRotation: replacing the files rotates a running identity
// without a restart, and a handshake sees the new certificate.
func TestReloadOnRotation(t *testing.T) {
	dir := t.TempDir()
	node, err := Issue(dir, "node", RoleNode, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	worker, err := Issue(dir, "worker", RoleWorker, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewReloader(node)
	if err != nil {
		t.Fatal(err)
	}
	srv.every = 0 // check the files at every handshake
	cli, err := NewReloader(worker)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		t.Helper()
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(a, srv.ServerConfig(RoleWorker)).Handshake() }()
		c := tls.Client(b, cli.ClientConfig(RoleNode, ""))
		if err := c.Handshake(); err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("server handshake: %v", err)
		}
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	time.Sleep(10 * time.Millisecond) // a new modification time
	if _, err := Issue(dir, "node", RoleNode, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if second := serial(); second == first {
		t.Errorf("after rotating the node's files the handshake still shows serial %s", first)
	}
}

func TestRoles(t *testing.T) {
	dir := t.TempDir()
	w, err := Issue(dir, "w", RoleWorker, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Issue(dir, "n", RoleNode, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		f    Files
		want Role
	}{{w, RoleWorker}, {n, RoleNode}} {
		r, err := NewReloader(tt.f)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(r.Certificate().Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := PeerRole(leaf); got != tt.want {
			t.Errorf("PeerRole(%s) = %s, want %s", tt.f.Cert, got, tt.want)
		}
		if err := checkRole(leaf, RoleCA); !errors.Is(err, ErrRole) {
			t.Errorf("checkRole(%s, CA) = %v; want ErrRole", tt.f.Cert, err)
		}
	}
}
