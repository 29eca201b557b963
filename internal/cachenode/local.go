package cachenode

import (
	"context"
	"fmt"
	"log/slog"
	"net"
)

// StartLocal starts n cache nodes of 256 MiB in this process on 127.0.0.2…
// (one loopback address each, as separate hosts would have), for lode
// demo. stop ends them.
func StartLocal(ctx context.Context, log *slog.Logger, n int) (nodes []string, stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	for i := 0; i < n; i++ {
		srv, err := NewServer(ServerConfig{MemBytes: 256 << 20, Log: log})
		if err != nil {
			cancel()
			return nil, nil, err
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", i+2))
		if err != nil {
			cancel()
			return nil, nil, err
		}
		nodes = append(nodes, l.Addr().String())
		go srv.Serve(ctx, l)
	}
	return nodes, cancel, nil
}
