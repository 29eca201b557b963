package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// RootState is a root's place in its lifecycle (DESIGN.md, "Garbage
// collection"): active → retired → expired → deleted.
type RootState string

const (
	RootActive  RootState = "active"  // read and write; builds deduplicate against it
	RootRetired RootState = "retired" // read only; live images are being copied forward
	RootExpired RootState = "expired" // nothing live left; reads raise alarms
	// RootDeleting marks a root whose deletion has started: its objects are
	// being removed and its STATE object goes last. A collector that finds a
	// root in this state finishes the deletion whatever the grace or alarms
	// say, because some of its objects may already be gone. When the STATE
	// object is gone the root is deleted (Roots no longer lists it).
	RootDeleting RootState = "deleting"
)

// ErrIllegalTransition: a root was asked to move to a state its current
// state cannot reach (see transitions).
var ErrIllegalTransition = errors.New("illegal root state transition")

// transitions is the table of legal moves of a root's lifecycle (DESIGN.md,
// "Garbage collection (roots)"). Any other move is ErrIllegalTransition; in
// particular nothing ever goes back to active or retired, so a root that
// stopped taking builds never takes them again.
var transitions = map[RootState][]RootState{
	RootActive:   {RootRetired},
	RootRetired:  {RootExpired},
	RootExpired:  {RootDeleting},
	RootDeleting: {}, // → deleted is the removal of the STATE object
}

// CheckTransition returns nil if a root may move from one state to another.
func CheckTransition(from, to RootState) error {
	if slices.Contains(transitions[from], to) {
		return nil
	}
	return fmt.Errorf("%w: %s → %s", ErrIllegalTransition, from, to)
}

// Alarming reports whether reads of a root in state s raise its alarm:
// nothing live should be read from an expired root, or one being deleted.
func (s RootState) Alarming() bool { return s == RootExpired || s == RootDeleting }

// RootInfo is the content of roots/<root>/STATE.
type RootInfo struct {
	ID    RootID    `json:"-"`
	State RootState `json:"state"`
	Since time.Time `json:"since"`
}

// ErrNoActiveRoot is returned by ActiveRoot with create=false when no root is
// active.
var ErrNoActiveRoot = errors.New("no active root")

// rootPrefix and rootDigits make root ids that sort in creation order:
// r-000001, r-000002, …
const (
	rootIDPrefix = "r-"
	rootDigits   = 6
)

// RootIDFor returns the id of the n-th root.
func RootIDFor(n int) RootID { return RootID(fmt.Sprintf("%s%0*d", rootIDPrefix, rootDigits, n)) }

// RootNumber returns n for an id made by RootIDFor, or -1.
func RootNumber(r RootID) int {
	s, ok := strings.CutPrefix(string(r), rootIDPrefix)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// ReadRoot reads the state of root r.
func ReadRoot(ctx context.Context, st Store, r RootID) (RootInfo, error) {
	b, err := st.Get(ctx, StateKey(r), nil)
	if err != nil {
		return RootInfo{}, fmt.Errorf("reading state of root %s: %w", r, err)
	}
	var ri RootInfo
	if err := json.Unmarshal(b, &ri); err != nil {
		return RootInfo{}, fmt.Errorf("reading state of root %s: %w", r, err)
	}
	ri.ID = r
	return ri, nil
}

// WriteRoot replaces the state of root ri.ID.
func WriteRoot(ctx context.Context, st Store, ri RootInfo) error {
	b, _ := json.Marshal(ri)
	if err := st.Put(ctx, StateKey(ri.ID), append(b, '\n')); err != nil {
		return fmt.Errorf("writing state of root %s: %w", ri.ID, err)
	}
	return nil
}

// Roots lists every root that has a state object, oldest first.
func Roots(ctx context.Context, st Store) ([]RootInfo, error) {
	var ids []RootID
	err := st.ListDirs(ctx, RootsPrefix(), func(name string) error {
		ids = append(ids, RootID(name))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing roots in %s: %w", st, err)
	}
	var out []RootInfo
	for _, id := range ids {
		ri, err := ReadRoot(ctx, st, id)
		if errors.Is(err, ErrNotFound) {
			continue // a root being created, or one whose deletion is under way
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ri)
	}
	sort.Slice(out, func(i, j int) bool { return RootNumber(out[i].ID) < RootNumber(out[j].ID) })
	return out, nil
}

// ActiveRoot returns the newest active root. When none exists and create is
// true it creates the next root, active since now; concurrent creators agree
// on one id because creation is PutIfAbsent of its STATE.
func ActiveRoot(ctx context.Context, st Store, create bool, now time.Time) (RootID, error) {
	roots, err := Roots(ctx, st)
	if err != nil {
		return "", err
	}
	next := 1
	for i := len(roots) - 1; i >= 0; i-- {
		if roots[i].State == RootActive {
			return roots[i].ID, nil
		}
	}
	if len(roots) > 0 {
		next = RootNumber(roots[len(roots)-1].ID) + 1
	}
	if !create {
		return "", fmt.Errorf("store %s: %w", st, ErrNoActiveRoot)
	}
	return CreateRoot(ctx, st, next, now)
}

// CreateRoot creates root number n as active. If it already exists (another
// process created it first) its id is returned.
func CreateRoot(ctx context.Context, st Store, n int, now time.Time) (RootID, error) {
	id := RootIDFor(n)
	b, _ := json.Marshal(RootInfo{State: RootActive, Since: now.UTC()})
	err := st.PutIfAbsent(ctx, StateKey(id), append(b, '\n'))
	if err != nil && !errors.Is(err, ErrExists) {
		return "", fmt.Errorf("creating root %s: %w", id, err)
	}
	return id, nil
}
