package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// Sentinel errors.
var (
	// ErrIO marks every failed read. Errors from ReadAt wrap it and the cause
	// (store.ErrNotFound, chunk.ErrCorrupt, context.DeadlineExceeded, ...).
	// Frontends map any error to EIO.
	ErrIO = errors.New("chunk unavailable")
	// ErrClosed: the image or agent was closed.
	ErrClosed = errors.New("agent closed")
	// ErrPanic: the read hit a bug and panicked; the panic was recovered and
	// only this read failed (Image.ReadAt). Errors wrapping it wrap ErrIO too.
	ErrPanic = errors.New("read panicked (recovered)")
)

// Tier is a source of chunk ciphertext: the disk cache, the cache fleet, the
// origin.
//
// Contract:
//   - Every method is safe for concurrent use and honours ctx.
//   - Fetch returns the ciphertext of chunk n, appended into dst[:0] when it
//     has room (else newly allocated); the returned slice is the caller's. A
//     tier that does not hold n returns an error wrapping store.ErrNotFound.
//     A tier may verify what it returns (an error that wraps chunk.ErrCorrupt
//     reports a failure), but the caller verifies again with chunk.Open:
//     Fetch's bytes are not trusted, unless the tier is a NameVerifier.
//   - Fill offers verified ciphertext of n for the tier to keep. It is
//     best-effort: errors are only logged by the agent. Fill must not retain
//     ciphertext after it returns (the agent reuses the buffer).
//   - Name is a short constant label ("disk", "fleet", "origin") used in
//     metrics, logs and Stats, never to decide behaviour.
//
// Roles: what a tier is to the agent, beyond being a source of ciphertext,
// it declares by implementing one of these small interfaces (each method
// returns true; a tier in another package needs no import of this one).
// Decorators that implement Wrapper pass roles through.
//   - NameVerifier: its Fetch returns only ciphertext it matched to the
//     name itself (the fleet client), so the agent skips hashing it again;
//   - FleetRole: it is the shared cache fleet: the agent reports lazy
//     loading degraded when it is unreachable (DegradedFleetUnreachable);
//   - OriginRole: it is the origin, the last resort: a read served by it
//     while a fleet is configured is DegradedOriginFallback.
type Tier interface {
	Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error)
	Fill(ctx context.Context, n chunk.Name, ciphertext []byte) error
	Name() string
}

// NameVerifier is implemented by a Tier whose Fetch returns only
// ciphertext it has itself hashed and matched to the requested name: the
// cache fleet's client, which must hash every rebuilt chunk to tell good
// shards from bad. The agent then only decrypts and authenticates such a
// chunk (chunk.OpenVerified) instead of hashing 512 KiB a second time. The
// tier is part of this process, not a remote party; bytes from a remote node
// are never trusted without a hash.
type NameVerifier interface {
	VerifiesNames() bool
}

// FleetRole is implemented by the cache fleet's tier (see Tier, "Roles").
type FleetRole interface {
	IsFleet() bool
}

// OriginRole is implemented by the origin's tier (see Tier, "Roles").
type OriginRole interface {
	IsOrigin() bool
}

// Wrapper is implemented by Tier decorators that pass Fetch's bytes through
// unchanged (Limit, RateLimit, Retry, Coordinate), so that the wrapped
// tier's roles — a NameVerifier stays one — hold for the decorator. A
// decorator that may alter bytes must not implement it.
type Wrapper interface {
	Unwrap() Tier
}

// declares reports whether t, or the tier it wraps through Wrappers,
// implements role R and says yes.
func declares[R any](t Tier, yes func(R) bool) bool {
	for t != nil {
		if r, ok := t.(R); ok {
			return yes(r)
		}
		w, ok := t.(Wrapper)
		if !ok {
			return false
		}
		t = w.Unwrap()
	}
	return false
}

// verifiesNames, isFleet and isOrigin read t's roles.
func verifiesNames(t Tier) bool { return declares(t, NameVerifier.VerifiesNames) }
func isFleet(t Tier) bool       { return declares(t, FleetRole.IsFleet) }
func isOrigin(t Tier) bool      { return declares(t, OriginRole.IsOrigin) }

// origin is the object store as the last tier.
type origin struct {
	st   store.Store
	root store.RootID
}

var _ Tier = (*origin)(nil)

// NewOrigin returns the Tier that reads chunks of root from st. Its Fill is a
// no-op: chunks reach the origin only through a build.
func NewOrigin(st store.Store, root store.RootID) Tier { return &origin{st: st, root: root} }

func (o *origin) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	b, err := o.st.Get(ctx, store.ChunkKey(o.root, n), dst)
	if err != nil {
		return nil, fmt.Errorf("getting chunk %s from %s: %w", n, o.st, err)
	}
	return b, nil
}

func (o *origin) Fill(context.Context, chunk.Name, []byte) error { return nil }

func (o *origin) Name() string { return "origin" }

// IsOrigin declares the origin's role.
func (o *origin) IsOrigin() bool { return true }
