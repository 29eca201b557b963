package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// TestWorkerKeyringGuard checks issue #19's "keys where they belong" from
// the command line: worker commands refuse the builder's keyring (naming
// --allow-store-secret), `lode keys export` writes a worker keyring, builds
// refuse that one, and a worker asked for a tenant it has no key for says so.
func TestWorkerKeyringGuard(t *testing.T) {
	c := newCLI(t)
	c.buildSample(t)
	dir := t.TempDir()
	workerCmds := [][]string{
		{"mount", "demo", filepath.Join(dir, "mnt"), "--state-dir", filepath.Join(dir, "state")},
		{"run", "demo"},
		{"serve-nbd", "demo", "--listen", "unix:" + filepath.Join(dir, "nbd.sock")},
		{"serve-vhost", "demo", "--socket", filepath.Join(dir, "vhost.sock")},
		{"agent", "--socket", filepath.Join(dir, "agent.sock"), "--state-dir", filepath.Join(dir, "state")},
	}
	for _, args := range workerCmds {
		err := c.execLode(t, args...)
		if !errors.Is(err, manifest.ErrStoreSecretLoaded) || !strings.Contains(err.Error(), "--allow-store-secret") {
			t.Errorf("lode %s with the builder's keyring = %v; want ErrStoreSecretLoaded naming --allow-store-secret", args[0], err)
		}
	}

	// A second tenant, then a worker keyring for it alone.
	global.tenant = "other"
	if err := c.execLode(t, "keys", "create"); err != nil {
		t.Fatal(err)
	}
	wk := filepath.Join(dir, "worker-other.json")
	if err := c.execLode(t, "keys", "export", "--out", wk); err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.LoadFileKeyring(wk)
	if err != nil {
		t.Fatal(err)
	}
	if kr.HasStoreSecret() || strings.Join(kr.Tenants(), ",") != "other" {
		t.Errorf("exported keyring: store secret %v, tenants %v; want none and [other]", kr.HasStoreSecret(), kr.Tenants())
	}
	global.tenant = "default,other"
	if err := c.execLode(t, "keys", "export", "--out", filepath.Join(dir, "both.json")); err != nil {
		t.Fatal(err)
	}
	if kr, err := manifest.LoadFileKeyring(filepath.Join(dir, "both.json")); err != nil || strings.Join(kr.Tenants(), ",") != "default,other" {
		t.Errorf("export --tenant default,other: %v, %v", kr, err)
	}
	global.tenant = "default,nobody"
	if err := c.execLode(t, "keys", "export", "--out", filepath.Join(dir, "x.json")); !errors.Is(err, manifest.ErrNoKey) {
		t.Errorf("export of a tenant without a key = %v; want ErrNoKey", err)
	}

	// The worker keyring passes the guard, but holds no key for default.
	global.tenant = "default"
	err = c.execLode(t, "--keyring", wk, "mount", "demo", filepath.Join(dir, "mnt"), "--state-dir", filepath.Join(dir, "state"))
	if !errors.Is(err, manifest.ErrNoKey) || !strings.Contains(err.Error(), `tenant "default"`) {
		t.Errorf("mount of default/demo with a worker keyring for other = %v; want ErrNoKey naming tenant default", err)
	}
	// Builds need the store secret.
	err = c.execLode(t, "--keyring", wk, "--tenant", "other", "build", "--name", "x", sample(t))
	if !errors.Is(err, manifest.ErrNoStoreSecret) {
		t.Errorf("build with a worker keyring = %v; want ErrNoStoreSecret", err)
	}
}

// TestKeysKMS builds and inspects an image of a tenant whose key is in KMS
// (local-kms), through the commands: the manifest's data key is bound to the
// image name, so another name pointing at the same manifest cannot open it.
func TestKeysKMS(t *testing.T) {
	const keyID = "0d3c8a57-52a4-4a2e-8a7f-3b9b7c0f1e11"
	srv := lodetest.StartKMS(t, lodetest.KMSKey{ID: keyID, BackingKeys: [][32]byte{{1, 2, 3}}})
	c := newCLI(t)
	global.tenant = "acme"
	if err := c.execLode(t, "keys", "create"); err != nil { // the store secret
		t.Fatal(err)
	}
	global.tenant = "kmsco"
	if err := c.execLode(t, "keys", "kms", "--key-id", keyID, "--region", srv.Region, "--endpoint", srv.Endpoint); err != nil {
		t.Fatal(err)
	}
	if err := c.execLode(t, "build", "--name", "demo", sample(t)); err != nil {
		t.Fatal(err)
	}
	c.stdout.Reset()
	if err := c.execLode(t, "inspect", "demo"); err != nil {
		t.Fatalf("inspect of a KMS tenant's image = %v", err)
	}
	if !strings.Contains(c.stdout.String(), "demo") {
		t.Errorf("inspect printed:\n%s", c.stdout.String())
	}
	// A second name for the same manifest: its data key is bound to "demo".
	st, err := openStore(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Get(context.Background(), store.ImageKey("kmsco", "demo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), store.ImageKey("kmsco", "alias"), b); err != nil {
		t.Fatal(err)
	}
	if err := c.execLode(t, "inspect", "alias"); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("inspect of another name for the manifest = %v; want ErrWrongKey", err)
	}
	srv.Stop()
	if err := c.execLode(t, "inspect", "demo"); !errors.Is(err, manifest.ErrKMSUnavailable) {
		t.Errorf("inspect while KMS is down = %v; want ErrKMSUnavailable", err)
	}
}

// TestExportAccess: block export sockets are 0600 (or --socket-mode), and
// NBD on a network address needs TLS or --insecure-no-tls.
func TestExportAccess(t *testing.T) {
	c := newCLI(t)
	c.buildSample(t)
	dir := t.TempDir()
	err := c.execLode(t, "serve-nbd", "demo", "--allow-store-secret", "--listen", "0.0.0.0:0")
	if !errors.Is(err, nbd.ErrUnauthenticated) || !strings.Contains(err.Error(), "--insecure-no-tls") {
		t.Errorf("serve-nbd on 0.0.0.0 without TLS = %v; want ErrUnauthenticated naming --insecure-no-tls", err)
	}
	if err := c.execLode(t, "serve-nbd", "demo", "--allow-store-secret", "--listen", "0.0.0.0:0", "--tls-cert", "x.pem"); err == nil || !strings.Contains(err.Error(), "--tls-ca") {
		t.Errorf("serve-nbd with --tls-cert alone = %v; want an error asking for --tls-ca", err)
	}
	for _, tc := range []struct {
		args []string
		want os.FileMode
	}{
		{nil, 0o600},
		{[]string{"--socket-mode", "0660"}, 0o660},
	} {
		sock := filepath.Join(dir, fmt.Sprintf("nbd-%o.sock", tc.want))
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		o := serveNBDOptions{listen: "unix:" + sock, worker: c.workerOpts(), expose: exposeOptions{socketMode: "0600"}}
		if tc.args != nil {
			o.expose.socketMode = tc.args[1]
		}
		go func() { errc <- runServeNBD(ctx, o, "demo") }()
		waitFor(t, "the NBD socket", errc, func() bool { _, err := os.Stat(sock); return err == nil })
		fi, _ := os.Stat(sock)
		if got := fi.Mode().Perm(); got != tc.want {
			t.Errorf("serve-nbd socket mode = %04o, want %04o", got, tc.want)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("serve-nbd = %v", err)
		}
	}
}

// TestCacheServeAccess: a cache node listens on loopback by default and
// refuses another address without TLS unless --insecure-no-tls; `lode cache
// certs` issues the fleet's certificates.
func TestCacheServeAccess(t *testing.T) {
	c := newCLI(t)
	serve, _, err := newCacheCmd().Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	if f := serve.Flags().Lookup("listen"); f == nil || !strings.HasPrefix(f.DefValue, "127.0.0.1:") {
		t.Errorf("cache serve --listen default = %v; want loopback", f)
	}
	err = c.execLode(t, "cache", "serve", "--listen", "0.0.0.0:0", "--mem", "1MiB")
	if !errors.Is(err, cachenode.ErrUnauthenticated) || !strings.Contains(err.Error(), "--insecure-no-tls") {
		t.Errorf("cache serve on 0.0.0.0 without TLS = %v; want ErrUnauthenticated naming --insecure-no-tls", err)
	}
	dir := t.TempDir()
	for _, args := range [][]string{{"--node", "n1", "--hosts", "127.0.0.1"}, {"--worker", "w1"}, {"--nbd", "x"}} {
		if err := c.execLode(t, append([]string{"cache", "certs", "--dir", dir}, args...)...); err != nil {
			t.Errorf("cache certs %v = %v", args, err)
		}
	}
	for _, f := range []string{"ca.crt", "ca.key", "n1.crt", "n1.key", "w1.crt", "w1.key", "x.crt", "x.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Errorf("cache certs did not write %s: %v", f, err)
		} else if strings.HasSuffix(f, ".key") && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %04o, want 0600", f, fi.Mode().Perm())
		}
	}
	if err := c.execLode(t, "cache", "certs", "--dir", dir, "--node", "a", "--worker", "b"); err == nil {
		t.Error("cache certs with two roles succeeded")
	}
}
