// Package gc collects garbage by roots (DESIGN.md, "Garbage collection
// (roots)"): a root is a self-contained namespace of manifests and chunks,
// and whole roots are retired, emptied of live images by copying them
// forward, expired and finally deleted. There are no reference counts and no
// index: the state lives in the store (roots/<root>/STATE, the image
// pointers, roots/<root>/ALARM).
//
// Owns: driving roots through their lifecycle active → retired → expired →
// deleting → deleted, one pass of the collector (Collector.Pass: Rotate,
// CopyForward, Collect), the report and the metrics.
// Does not own: the root record, its states and their transition table, or
// the alarm marker that blocks deletion (store/roots.go, store/alarm.go:
// store.CheckTransition, store.RaiseAlarm, store.ClearAlarm; the daemon and
// the collector raise alarms), the object layout (store/keys.go), how builds
// choose the active root (store.ActiveRoot), or image pointers (catalog).
// Hand-written: the lifecycle is specific to this layout.
//
// # A pass
//
//  1. Rotate: if the newest active root is older than RotateAfter, create
//     the next root (active) and then retire every older active root. A
//     crash between the two writes leaves two active roots; builds use the
//     newest and the next pass retires the other.
//  2. Copy forward: for each retired root, for each live pointer naming it,
//     copy every chunk the manifest names (Stat in the active root, else Get,
//     verify against the chunk name, PutIfAbsent), then the manifest bytes
//     unchanged (manifest.Root keeps the build root that salted the chunks;
//     the pointer says where the image lives now), then Put the pointer
//     (same manifest and Created, Deleted false). A crash leaves at most
//     unreferenced objects in the active root, which go when that root is
//     itself retired. Deleted images are not copied.
//  3. Expire: a retired root that has been retired for BuildTimeout, and
//     that no live pointer names (read again at that moment), becomes
//     expired.
//  4. Delete: an expired root past Grace with no ALARM object and no live
//     pointer naming it becomes "deleting"; the pointers of deleted images
//     that name it are removed, then its objects, then its STATE. A root
//     found "deleting" is always finished.
//
// # Races, and how each is handled
//
//   - A build resolved the active root just before rotation and keeps
//     writing chunks, its manifest and its pointer into the now-retired root.
//     The root is not expired until BuildTimeout after it was retired (no
//     build may run longer, and builds that started after the rotation chose
//     the new root), and pointers are read again at expiry: any live pointer
//     still naming the root is copied then, and if one remains the root stays
//     retired.
//   - A build that deduplicated against a chunk in a retired root (it skipped
//     the upload because the chunk was there) is safe for the same reason:
//     the retired root keeps every object until after settle and grace.
//   - A pointer changes between the scan and the repoint (a new build of the
//     same name, or `lode images delete`): the repoint is catalog.Swap, which
//     leaves the pointer alone if it differs from the scan's. On a store with
//     a compare-and-swap (file, mem) that is atomic; on s3 it is a re-read
//     just before the Put, so a write landing between the two (milliseconds)
//     is overwritten: a rebuild reverts to the copied manifest (run the build
//     again) or a delete is undone (delete again). Only one collector may run
//     at a time; it is the only writer that repoints.
//   - A mount resolved its image before the repoint and keeps reading the
//     old root. That works while the root is retired or expired (nothing is
//     deleted before Grace); reads from an expired root raise an alarm, which
//     also blocks deletion. Agents should re-resolve the pointer (the chunk
//     names are the same in the new root) instead of reading an expired root.
//   - A live pointer names an expired root at deletion time (a lost race
//     above, a restored backup): the collector raises the alarm itself and
//     does not delete.
//   - Removing the pointer of a deleted image when its root goes
//     (catalog.Remove): only if unchanged, so a rebuild of the name is kept
//     (on s3, same narrow window as above).
//   - A crash at any point: every step reads its inputs from the store and
//     writes idempotently (PutIfAbsent of content-addressed objects, Put of
//     a state or pointer), so the next pass redoes what is missing.
package gc
