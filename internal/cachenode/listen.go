package cachenode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/lode-dev/lode/internal/certs"
)

// ListenAndServe runs a node (`lode cache serve`) on addr until ctx ends.
// With files set (certificate, key and CA together, from lode cache certs)
// every connection is mutual TLS admitting worker certificates; without,
// CheckListen decides whether addr may be served in the clear (insecure is
// --insecure-no-tls).
func ListenAndServe(ctx context.Context, addr string, sc ServerConfig, files certs.Files, insecure bool) error {
	if files != (certs.Files{}) {
		if files.Cert == "" || files.Key == "" || files.CA == "" {
			return errors.New("--tls-cert, --tls-key and --tls-ca go together: the CA is what checks workers' certificates")
		}
		r, err := certs.NewReloader(files)
		if err != nil {
			return err
		}
		sc.TLS = r.ServerConfig(certs.RoleWorker)
	}
	if err := CheckListen(addr, sc.TLS != nil, insecure); err != nil {
		return err
	}
	srv, err := NewServer(sc)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	if sc.Log != nil {
		sc.Log.Info("cache node serving", slog.String("listen", l.Addr().String()),
			slog.Uint64("mem", uint64(sc.MemBytes)), slog.String("disk", sc.DiskDir), slog.Uint64("disk_size", uint64(sc.DiskBytes)))
	}
	return srv.Serve(ctx, l)
}
