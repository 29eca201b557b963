package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"google.golang.org/grpc"
)

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	sock := fs.String("socket", "", "unix socket to serve containerd's snapshots API on")
	root := fs.String("root", "", "the snapshotter's state and cache directory")
	fs.Parse(args)
	if *sock == "" || *root == "" {
		return fmt.Errorf("-socket and -root are required")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := os.MkdirAll(*root, 0o700); err != nil {
		return err
	}
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &service.Config{})
	if err != nil {
		return fmt.Errorf("stargz snapshotter at %s: %w", *root, err)
	}
	os.Remove(*sock)
	l, err := net.Listen("unix", *sock)
	if err != nil {
		sn.Close()
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		srv.Stop()
	}
	if cerr := sn.Close(); err == nil {
		err = cerr
	}
	return err
}
