package fuse

import (
	"context"
	"os"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/devicetest"
	"github.com/lode-dev/lode/internal/lodetest"
)

// The FUSE file, read through the kernel, passes the Device suite.
func TestDeviceConformanceFUSE(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE)
	img := randomBytes(9, 2<<20+777)
	m, err := ServeFile(context.Background(), t.TempDir(), "image", blockdev.NewMemDevice(img), Options{Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount()
	f, err := os.Open(m.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	devicetest.Run(t, devicetest.FileDevice{R: f, N: int64(len(img))}, img)
}
