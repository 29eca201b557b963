package worker

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store/file"
)

// bgEnv tells TestBackgroundServerHelper, run by StartBackground, where the
// world and the mount state are: world dir, state dir, home.
const bgEnv = "LODE_TEST_BACKGROUND"

// lode mount --background's sequence: the server is started before the
// mount is made, the parent mounts and hands the live mount over, and the
// server (not the parent) then serves it until it is unmounted.
func TestBackgroundMountHandsOver(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Loop)
	w := imagetest.NewWorld(t, "default")
	w.Build(t, "default", "demo", 2, 6, 64<<10)
	home := t.TempDir()
	stateDir, dir := filepath.Join(home, "mounts"), filepath.Join(home, "mnt")
	os.Setenv(bgEnv, strings.Join([]string{w.Dir, stateDir, home}, "|"))
	defer os.Unsetenv(bgEnv)
	bg, err := startBackground(os.Args[0], withoutBackground([]string{"-test.run=^TestBackgroundServerHelper$", "--background", "-test.v"}), filepath.Join(home, "logs"), "demo", dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	im, err := Open(ctx, w.St, w.Kr, "default", "demo", testOptions(home).ForParent(), nil, nil)
	if err != nil {
		t.Fatal(bg.Abort(err))
	}
	defer im.Close()
	m, err := bg.Serve(ctx, im, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done: // handed over: this side no longer serves
	case <-time.After(5 * time.Second):
		t.Errorf("the parent's mount still serves after the handover")
	}
	im.Close() // the parent's reader is gone; reads must still work
	ents, err := os.ReadDir(filepath.Join(dir, "data"))
	if err != nil || len(ents) != 6 {
		t.Errorf("the mount lists %d files in data/, %v; want 6", len(ents), err)
	}
	if err := fuse.Unmount(ctx, stateDir, dir); err != nil {
		t.Fatal(err)
	}
	alive := func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(bg.Pid()) + "/stat")
		return err == nil && !strings.Contains(string(b), ") Z ")
	}
	for deadline := time.Now().Add(10 * time.Second); alive() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if alive() {
		t.Errorf("the server is still running after the unmount")
	}
	log, _ := os.ReadFile(bg.LogPath())
	if !strings.Contains(string(log), "image mount adopted") || !strings.Contains(string(log), "SERVED") {
		t.Errorf("the server did not adopt and serve the mount; its log:\n%s", log)
	}
}

// TestBackgroundServerHelper is the server StartBackground runs in
// TestBackgroundMountHandsOver; alone it does nothing.
func TestBackgroundServerHelper(t *testing.T) {
	env := strings.Split(os.Getenv(bgEnv), "|")
	c, err := AdoptConn()
	if len(env) != 3 || c == nil {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	worldDir, stateDir, home := env[0], env[1], env[2]
	st, err := file.New(filepath.Join(worldDir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.LoadFileKeyring(filepath.Join(worldDir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	im, err := Open(ctx, st, kr, "default", "demo", testOptions(home), nil, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	m, err := im.AdoptMount(ctx, c, stateDir, 4, FillOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.Wait()
	t.Log("SERVED until unmounted")
}
