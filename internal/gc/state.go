package gc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lode-dev/lode/internal/store"
)

// StateDeleting marks a root whose deletion has started: its objects are
// being removed and its STATE object goes last. A pass that finds a root in
// this state finishes the deletion whatever the grace or alarms say, because
// some of its objects may already be gone. When the STATE object is gone the
// root is deleted (store.Roots no longer lists it).
const StateDeleting store.RootState = "deleting"

// Sentinel errors.
var (
	// ErrIllegalTransition: a root was asked to move to a state its current
	// state cannot reach (see transitions).
	ErrIllegalTransition = errors.New("illegal root state transition")
	// ErrWrongState: a step was asked to work on a root in a state it does
	// not handle (for example copying forward out of an active root).
	ErrWrongState = errors.New("root in wrong state")
	// ErrAlarm: a root cannot be deleted because roots/<root>/ALARM exists.
	ErrAlarm = errors.New("root has an alarm")
)

// transitions is the table of legal moves of a root's lifecycle (DESIGN.md,
// "Garbage collection (roots)"). Any other move is ErrIllegalTransition; in
// particular nothing ever goes back to active or retired, so a root that
// stopped taking builds never takes them again.
var transitions = map[store.RootState][]store.RootState{
	store.RootActive:  {store.RootRetired},
	store.RootRetired: {store.RootExpired},
	store.RootExpired: {StateDeleting},
	StateDeleting:     {}, // → deleted is the removal of the STATE object
}

// CheckTransition returns nil if a root may move from one state to another.
func CheckTransition(from, to store.RootState) error {
	if slices.Contains(transitions[from], to) {
		return nil
	}
	return fmt.Errorf("%w: %s → %s", ErrIllegalTransition, from, to)
}

// moveRoot writes ri's new state, since now, after checking the table.
func moveRoot(ctx context.Context, st store.Store, ri store.RootInfo, to store.RootState, now time.Time) (store.RootInfo, error) {
	if err := CheckTransition(ri.State, to); err != nil {
		return ri, fmt.Errorf("moving root %s: %w", ri.ID, err)
	}
	next := store.RootInfo{ID: ri.ID, State: to, Since: now.UTC()}
	if err := store.WriteRoot(ctx, st, next); err != nil {
		return ri, err
	}
	return next, nil
}
