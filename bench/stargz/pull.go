package main

import (
	"context"
	"flag"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/stargz-snapshotter/fs/source"
)

func pull(args []string) error {
	fs := flag.NewFlagSet("pull", flag.ExitOnError)
	address := fs.String("address", "", "containerd's socket")
	ns := fs.String("namespace", "coldbench", "containerd namespace")
	snap := fs.String("snapshotter", "overlayfs", "snapshotter to unpack into")
	lazy := fs.Bool("lazy", false, "add the remote-snapshotter labels (lazy pull, as ctr-remote rpull)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one image reference")
	}
	ref := fs.Arg(0)
	cl, err := containerd.New(*address, containerd.WithDefaultNamespace(*ns))
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", *address, err)
	}
	defer cl.Close()
	// Plain HTTP to the loopback registry (the bench's latency proxy).
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost))})
	opts := []containerd.RemoteOpt{containerd.WithPullUnpack, containerd.WithPullSnapshotter(*snap), containerd.WithResolver(resolver)}
	if *lazy {
		opts = append(opts, containerd.WithImageHandlerWrapper(source.AppendDefaultLabelsHandlerWrapper(ref, 0)))
	}
	if _, err := cl.Pull(context.Background(), ref, opts...); err != nil {
		return fmt.Errorf("pull %s into %s: %w", ref, *snap, err)
	}
	return nil
}
