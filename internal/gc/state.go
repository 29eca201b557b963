package gc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lode-dev/lode/internal/store"
)

// Sentinel errors.
var (
	// ErrWrongState: a step was asked to work on a root in a state it does
	// not handle (for example copying forward out of an active root).
	ErrWrongState = errors.New("root in wrong state")
	// ErrAlarm: a root cannot be deleted because roots/<root>/ALARM exists.
	ErrAlarm = errors.New("root has an alarm")
)

// moveRoot writes ri's new state, since now, after checking the table
// (store.CheckTransition).
func moveRoot(ctx context.Context, st store.Store, ri store.RootInfo, to store.RootState, now time.Time) (store.RootInfo, error) {
	if err := store.CheckTransition(ri.State, to); err != nil {
		return ri, fmt.Errorf("moving root %s: %w", ri.ID, err)
	}
	next := store.RootInfo{ID: ri.ID, State: to, Since: now.UTC()}
	if err := store.WriteRoot(ctx, st, next); err != nil {
		return ri, err
	}
	return next, nil
}
