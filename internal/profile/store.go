package profile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// MergedKey is the key of the merged profile of manifest id in root r.
func MergedKey(r store.RootID, id string) string { return store.ProfilesPrefix(r, id) + "merged" }

// NoLearnKey is the key of the marker that turns learning off for manifest
// id in root r (lode build --learn-profile=false): publishers that find it
// publish nothing. It holds no secret, only a note for people.
func NoLearnKey(r store.RootID, id string) string { return store.ProfilesPrefix(r, id) + "no-learn" }

// ErrLearningOff: the image was built with --learn-profile=false.
var ErrLearningOff = errors.New("learning turned off for this image (lode build --learn-profile=false)")

// DisableLearning marks manifest id in root r so that no worker learns its
// startup profile (lode build --learn-profile=false).
func DisableLearning(ctx context.Context, st store.Store, r store.RootID, id string) error {
	k := NoLearnKey(r, id)
	if err := st.Put(ctx, k, []byte("lode build --learn-profile=false: workers do not learn this manifest's startup profile\n")); err != nil {
		return fmt.Errorf("turning off profile learning for manifest %s: %w", id, err)
	}
	return nil
}

// learningOff reports whether im's learning was turned off.
func learningOff(ctx context.Context, st store.Store, im Image) (bool, error) {
	_, err := st.Stat(ctx, NoLearnKey(im.Root, im.ID))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("checking %s: %w", NoLearnKey(im.Root, im.ID), err)
}

// StartsPrefix is the prefix of the start objects of manifest id in root r.
func StartsPrefix(r store.RootID, id string) string { return store.ProfilesPrefix(r, id) + "starts/" }

// startKey names a new start object recorded at t.
func startKey(r store.RootID, id string, t time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s%020d-%s", StartsPrefix(r, id), t.UnixNano(), hex.EncodeToString(b[:]))
}

// Image is the manifest a profile belongs to, where it lives: its root (the
// pointer's), its id, and the opened manifest (for its key and chunk count).
type Image struct {
	Root store.RootID
	ID   string
	M    *manifest.Manifest
}

// key derives the sealing key of im's profiles.
func (im Image) key() ([]byte, error) {
	k, ok := im.M.SubKey(KeyPurpose)
	if !ok {
		return nil, fmt.Errorf("profile of manifest %s: the manifest was not opened with its tenant key: %w", im.ID, manifest.ErrNoKey)
	}
	return k, nil
}

// Load reads and opens im's merged profile. It returns nil and no error
// when there is none; ErrCorrupt, ErrStale or ErrVersion when there is one
// that cannot be used (callers ignore it and start without).
func Load(ctx context.Context, st store.Store, im Image) (*Profile, error) {
	b, err := Fetch(ctx, st, im.Root, im.ID)
	if err != nil {
		return nil, err
	}
	return OpenFetched(b, im)
}

// Fetch reads the sealed merged profile of manifest id in root r (nil, nil
// when there is none). It needs no key, so a worker can read it while it
// reads and opens the manifest (worker.Open); OpenFetched opens it then.
func Fetch(ctx context.Context, st store.Store, r store.RootID, id string) ([]byte, error) {
	k := MergedKey(r, id)
	b, err := st.Get(ctx, k, nil)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading profile %s: %w", k, err)
	}
	return b, nil
}

// OpenFetched opens what Fetch returned for im (nil: no profile, nil).
func OpenFetched(b []byte, im Image) (*Profile, error) {
	if b == nil {
		return nil, nil
	}
	key, err := im.key()
	if err != nil {
		return nil, err
	}
	p, err := Open(b, im.ID, key, len(im.M.Names))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", MergedKey(im.Root, im.ID), err)
	}
	return p, nil
}

// Publish stores one start's read order of im as a start object, then
// rewrites im's merged profile from every start object (see the package
// doc, "Concurrent publishers"), and returns the merged profile. Start
// objects that do not open are left out with a log line. The order is not
// published when no chunk of it is in range, nor (ErrLearningOff) when the
// image was built with --learn-profile=false.
func Publish(ctx context.Context, st store.Store, im Image, order []uint32, now time.Time, log *slog.Logger) (*Profile, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, err := im.key()
	if err != nil {
		return nil, err
	}
	if off, err := learningOff(ctx, st, im); err != nil {
		return nil, err
	} else if off {
		return nil, fmt.Errorf("publishing a profile of manifest %s: %w", im.ID, ErrLearningOff)
	}
	one := FromStart(order, len(im.M.Names), now)
	if len(one.Chunks) == 0 {
		return nil, fmt.Errorf("publishing a profile of manifest %s: the start read no chunk", im.ID)
	}
	sealed, err := Seal(one, im.ID, key)
	if err != nil {
		return nil, err
	}
	own := startKey(im.Root, im.ID, now)
	if err := st.PutIfAbsent(ctx, own, sealed); err != nil {
		return nil, fmt.Errorf("storing profile %s: %w", own, err)
	}
	var keys []string
	err = st.List(ctx, StartsPrefix(im.Root, im.ID), func(k string, _ int64) error {
		if len(keys) < MaxStartObjects {
			keys = append(keys, k)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing profiles of manifest %s: %w", im.ID, err)
	}
	starts := []*Profile{one}
	for _, k := range keys {
		if k == own {
			continue
		}
		b, err := st.Get(ctx, k, nil)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading profile %s: %w", k, err)
		}
		p, err := Open(b, im.ID, key, len(im.M.Names))
		if err != nil {
			log.Warn("ignoring a start profile", "key", k, "err", err)
			continue
		}
		starts = append(starts, p)
	}
	merged := Combine(starts)
	b, err := Seal(merged, im.ID, key)
	if err != nil {
		return nil, err
	}
	mk := MergedKey(im.Root, im.ID)
	if err := st.Put(ctx, mk, b); err != nil {
		return nil, fmt.Errorf("storing profile %s: %w", mk, err)
	}
	return merged, nil
}

// CopyForward copies the profile objects of manifest id from root from to
// root to (the garbage collector's copy-forward; the objects are opaque to
// it and stay valid because the manifest id does not change). Objects the
// target has already are kept. It returns the objects and bytes copied.
func CopyForward(ctx context.Context, st store.Store, from, to store.RootID, id string) (objs int, bytes int64, err error) {
	src := store.ProfilesPrefix(from, id)
	var keys []string
	if err := st.List(ctx, src, func(k string, _ int64) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("listing profiles of manifest %s: %w", id, err)
	}
	for _, k := range keys {
		b, err := st.Get(ctx, k, nil)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return objs, bytes, fmt.Errorf("reading profile %s: %w", k, err)
		}
		tk := store.ProfilesPrefix(to, id) + strings.TrimPrefix(k, src)
		if err := st.PutIfAbsent(ctx, tk, b); errors.Is(err, store.ErrExists) {
			continue
		} else if err != nil {
			return objs, bytes, fmt.Errorf("storing profile %s: %w", tk, err)
		}
		objs++
		bytes += int64(len(b))
	}
	return objs, bytes, nil
}

// Summary is what lode inspect shows of an image's learned profile.
type Summary struct {
	Present bool      `json:"present"`
	Chunks  int       `json:"chunks,omitempty"`
	Starts  int       `json:"starts,omitempty"`
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
	// Error says why a profile present in the store is not used.
	Error string `json:"error,omitempty"`
	// LearningOff: built with --learn-profile=false.
	LearningOff bool `json:"learning_off,omitempty"`
}

// Summarize loads im's learned profile for display.
func Summarize(ctx context.Context, st store.Store, im Image) Summary {
	off, err := learningOff(ctx, st, im)
	if err != nil {
		return Summary{Error: err.Error()}
	}
	p, err := Load(ctx, st, im)
	switch {
	case err != nil:
		return Summary{Error: err.Error(), LearningOff: off}
	case p == nil:
		return Summary{LearningOff: off}
	}
	return Summary{Present: true, Chunks: len(p.Chunks), Starts: p.Starts, Created: p.Created, Updated: p.Updated, LearningOff: off}
}

// Text is the summary on one line, ages as of now.
func (s Summary) Text(now time.Time) string {
	switch {
	case s.Error != "":
		return "unusable, ignored (" + s.Error + ")"
	case !s.Present && s.LearningOff:
		return "none; learning turned off (lode build --learn-profile=false)"
	case !s.Present:
		return "none yet (learned from the first starts unless workers run with --learn-profile=false)"
	}
	return fmt.Sprintf("%d chunks from %d starts (of at most %d), last learned %s ago, first %s ago",
		s.Chunks, s.Starts, MaxStarts, now.Sub(s.Updated).Round(time.Second), now.Sub(s.Created).Round(time.Second))
}
