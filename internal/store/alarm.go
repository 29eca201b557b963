package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Alarm is the content of roots/<root>/ALARM: the first read (or check) that
// found something live in a root that should hold nothing live. While it
// exists the collector does not delete the root.
type Alarm struct {
	Root  RootID    `json:"-"`
	Image string    `json:"image"`           // tenant/name of the image read, when known
	Chunk string    `json:"chunk,omitempty"` // chunk name read, "" for a manifest or pointer
	Time  time.Time `json:"time"`
}

// RaiseAlarm writes root's alarm marker, naming the image and chunk whose
// read hit the root. The agent calls it on every read from an expired root
// (see docs/gc.md); the collector calls it when a live pointer names an
// expired root. The first alarm is kept: later ones do not overwrite its
// evidence. It is safe to call concurrently and repeatedly.
func RaiseAlarm(ctx context.Context, st Store, root RootID, image, chunk string) error {
	if err := ValidName("root", string(root)); err != nil {
		return fmt.Errorf("raising alarm: %w", err)
	}
	b, _ := json.Marshal(Alarm{Image: image, Chunk: chunk, Time: time.Now().UTC()})
	err := st.PutIfAbsent(ctx, AlarmKey(root), append(b, '\n'))
	if err != nil && !errors.Is(err, ErrExists) {
		return fmt.Errorf("raising alarm on root %s: %w", root, err)
	}
	return nil
}

// ReadAlarm returns root's alarm, or an error wrapping ErrNotFound when
// it has none.
func ReadAlarm(ctx context.Context, st Store, root RootID) (Alarm, error) {
	b, err := st.Get(ctx, AlarmKey(root), nil)
	if err != nil {
		return Alarm{}, fmt.Errorf("reading alarm of root %s: %w", root, err)
	}
	var a Alarm
	if err := json.Unmarshal(b, &a); err != nil {
		// A marker that does not parse still blocks deletion: report it.
		return Alarm{Root: root, Image: "(unreadable alarm: " + err.Error() + ")"}, nil
	}
	a.Root = root
	return a, nil
}

// ClearAlarm removes root's alarm marker so the collector may delete the
// root once its grace has passed. Clearing a root without one is not an
// error.
func ClearAlarm(ctx context.Context, st Store, root RootID) error {
	if err := ValidName("root", string(root)); err != nil {
		return fmt.Errorf("clearing alarm: %w", err)
	}
	if err := st.Delete(ctx, AlarmKey(root)); err != nil {
		return fmt.Errorf("clearing alarm of root %s: %w", root, err)
	}
	return nil
}

// HasAlarm reports whether root has an alarm marker.
func HasAlarm(ctx context.Context, st Store, root RootID) (bool, error) {
	_, err := st.Stat(ctx, AlarmKey(root))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking alarm of root %s: %w", root, err)
	}
	return true, nil
}
