package nbd

import (
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/certs"
	"github.com/lode-dev/lode/internal/lodetest"
)

// tlsClientDir lays out f the way libnbd (GnuTLS) reads tls-certificates=DIR.
func tlsClientDir(t *testing.T, f certs.Files) string {
	t.Helper()
	dir := t.TempDir()
	for src, dst := range map[string]string{f.CA: "ca-cert.pem", f.Cert: "client-cert.pem", f.Key: "client-key.pem"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestStartTLSWithNbdcopy serves an export that requires TLS with client
// certificates and reads it with the real libnbd tools: with the right
// certificate the bytes are exact; without TLS, or with a certificate from
// another CA or of another role, nothing is served.
func TestStartTLSWithNbdcopy(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("nbdcopy"), lodetest.Tool("nbdinfo"))
	pki := t.TempDir()
	srvFiles, err := certs.Issue(pki, "server", certs.RoleNBD, []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := certs.Issue(pki, "client", certs.RoleNBD, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	workerFiles, err := certs.Issue(pki, "worker", certs.RoleWorker, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA := t.TempDir()
	strangerFiles, err := certs.Issue(otherCA, "client", certs.RoleNBD, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	strangerFiles.CA = srvFiles.CA // trusts our server, but is not trusted by it

	r, err := certs.NewReloader(srvFiles)
	if err != nil {
		t.Fatal(err)
	}
	img := testImage()[:8<<20]
	addr := serve(t, "tcp", map[string]Export{"img": {Device: blockdev.NewMemDevice(img)}}, Config{TLS: r.ServerConfig(certs.RoleNBD)})

	good := "nbds://" + addr + "/img?tls-certificates=" + tlsClientDir(t, cliFiles)
	out := filepath.Join(t.TempDir(), "out.img")
	run(t, "nbdcopy", good, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(img) {
		t.Error("nbdcopy over TLS: bytes differ from the export")
	}

	refused := []struct{ name, uri string }{
		{"plain NBD", "nbd://" + addr + "/img"},
		{"client certificate from another CA", "nbds://" + addr + "/img?tls-certificates=" + tlsClientDir(t, strangerFiles)},
		{"client certificate of another role", "nbds://" + addr + "/img?tls-certificates=" + tlsClientDir(t, workerFiles)},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			o, err := exec.Command("nbdinfo", "--json", tc.uri).CombinedOutput()
			if err == nil || strings.Contains(string(o), `"export-size"`) {
				t.Errorf("nbdinfo %s succeeded:\n%s", tc.uri, o)
			}
		})
	}
}

// TestStartTLSRequired checks the forced-TLS option haggling at the
// protocol level: before STARTTLS every option but ABORT is refused.
func TestStartTLSRequired(t *testing.T) {
	pki := t.TempDir()
	srvFiles, err := certs.Issue(pki, "server", certs.RoleNBD, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r, err := certs.NewReloader(srvFiles)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, "tcp", map[string]Export{"img": {Device: blockdev.NewMemDevice(make([]byte, 1<<20))}}, Config{TLS: r.ServerConfig(certs.RoleNBD)})
	c := dialNBD(t, "tcp", addr)
	typ, err := c.goExport("img")
	if err != nil || typ != repErrTLSReqd {
		t.Errorf("NBD_OPT_GO before STARTTLS = %#x, %v; want NBD_REP_ERR_TLS_REQD", typ, err)
	}
	if err := c.sendOpt(optList, nil); err != nil {
		t.Fatal(err)
	}
	if _, typ, _, err := c.readOptReply(); err != nil || typ != repErrTLSReqd {
		t.Errorf("NBD_OPT_LIST before STARTTLS = %#x, %v; want NBD_REP_ERR_TLS_REQD", typ, err)
	}
	// EXPORT_NAME cannot be answered with an error: the server hangs up.
	if err := c.sendOpt(optExportName, []byte("img")); err != nil {
		t.Fatal(err)
	}
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.br.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Errorf("after EXPORT_NAME without TLS the server sent %d bytes, %v; want the connection closed", n, err)
	}
}

func TestCheckListen(t *testing.T) {
	tests := []struct {
		addr           string
		withTLS, insec bool
		wantRefused    bool
	}{
		{"unix:/run/lode/x.sock", false, false, false},
		{"127.0.0.1:10809", false, false, false},
		{"[::1]:10809", false, false, false},
		{"localhost:10809", false, false, false},
		{"0.0.0.0:10809", false, false, true},
		{":10809", false, false, true},
		{"10.1.2.3:10809", false, false, true},
		{"10.1.2.3:10809", true, false, false},
		{"10.1.2.3:10809", false, true, false},
	}
	for _, tt := range tests {
		err := CheckListen(tt.addr, tt.withTLS, tt.insec)
		if refused := errors.Is(err, ErrUnauthenticated); refused != tt.wantRefused {
			t.Errorf("CheckListen(%s, tls=%v, insecure=%v) = %v; want refused %v", tt.addr, tt.withTLS, tt.insec, err, tt.wantRefused)
		}
		if err != nil && !strings.Contains(err.Error(), "--insecure-no-tls") {
			t.Errorf("CheckListen(%s) = %v; the refusal must name --insecure-no-tls", tt.addr, err)
		}
	}
}
