// Command stargz is bench/coldstart.sh's stargz baseline, a bench-only
// program (its own module, so that the stargz snapshotter's dependencies
// never enter lode's go.mod). It wires the stargz snapshotter's own library;
// nothing of the snapshotter is written here:
//
//	stargz serve -socket S -root DIR
//	    serves the stargz snapshotter (github.com/containerd/stargz-snapshotter
//	    service package, default configuration) as a containerd proxy
//	    plugin of type "snapshot" on a unix socket, until SIGTERM.
//	stargz pull -address SOCK -snapshotter NAME [-lazy] REF
//	    pulls REF with containerd's Go client and unpacks it into NAME; with
//	    -lazy it adds the labels remote snapshotters read (as ctr-remote
//	    rpull does), so stargz mounts layers lazily instead of downloading them.
//	stargz convert -layout DIR -dst REF [-prioritized FILE]
//	    converts the one image of an OCI layout to eStargz (the estargz
//	    package) and pushes it to REF over plain HTTP; with -prioritized
//	    (one path a line, in access order) those files come first and a
//	    prefetch landmark follows them: stargz "optimized".
//
// The "optimized" image normally comes from ctr-remote's optimizer, which
// runs the container under fanotify to learn which files the start reads;
// that command's module (github.com/containerd/stargz-snapshotter/cmd) is
// not served by the Go module proxy here, so bench/coldstart.sh learns the
// file list another way (see there) and hands it to estargz.WithPrioritizedFiles,
// the same option the optimizer ends in.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "pull":
		err = pull(os.Args[2:])
	case "convert":
		err = convert(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "stargz %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: stargz serve|pull|convert … (see the package doc)")
	os.Exit(2)
}
