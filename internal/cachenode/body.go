package cachenode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"golang.org/x/sync/semaphore"

	"github.com/lode-dev/lode/internal/fleetproto"
)

// PUT bodies (issue #19). A body is read in steps of bodyStep bytes, and
// memory is taken from the node's put budget, and allocated, only as bytes
// arrive: a client that announces a 64 MiB shard and then sends nothing
// holds one step, not 64 MiB, and all bodies being read at once hold at
// most ServerConfig.PutBudget. A body that would exceed the budget waits
// for room (bounded by the request's deadline).

const (
	bodyStep          = 64 << 10
	defaultPutBudget  = 256 << 20
	errBodyTooLargeFm = "shard body exceeds %d bytes: %w"
)

// errBodyTooLarge: a body longer than fleetproto.MaxShardSize.
var errBodyTooLarge = errors.New("shard body too large")

type bodyBudget struct {
	sem *semaphore.Weighted
}

func newBodyBudget(n int64) *bodyBudget {
	if n <= 0 {
		n = defaultPutBudget
	}
	return &bodyBudget{sem: semaphore.NewWeighted(max(n, bodyStep))}
}

// read reads a body of want bytes (-1: unknown, up to EOF) from r. The
// returned release gives its bytes back to the budget; call it once the
// data is stored or dropped (the store accounts for it from then on).
func (b *bodyBudget) read(ctx context.Context, r io.Reader, want int64) ([]byte, func(), error) {
	var held int64
	release := func() { b.sem.Release(held); held = 0 }
	if want > fleetproto.MaxShardSize {
		return nil, release, fmt.Errorf(errBodyTooLargeFm, fleetproto.MaxShardSize, errBodyTooLarge)
	}
	var data []byte
	for want < 0 || int64(len(data)) < want {
		step := int64(bodyStep)
		if want >= 0 {
			step = min(step, want-int64(len(data)))
		}
		if int64(len(data))+step > fleetproto.MaxShardSize {
			return nil, release, fmt.Errorf(errBodyTooLargeFm, fleetproto.MaxShardSize, errBodyTooLarge)
		}
		if err := b.sem.Acquire(ctx, step); err != nil {
			return nil, release, fmt.Errorf("waiting for PUT buffer budget: %w", err)
		}
		held += step
		n := len(data)
		data = slices.Grow(data, int(step))[:n+int(step)]
		got, err := io.ReadFull(r, data[n:])
		data = data[:n+got]
		if want < 0 && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) {
			return data, release, nil
		}
		if err != nil {
			return nil, release, err
		}
	}
	return data, release, nil
}
