package lodetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// RegistryOptions configure StartRegistry.
type RegistryOptions struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1 signed by a CA made
	// for this registry (Registry.CAFile); otherwise plain HTTP.
	TLS bool
	// Users, when set, turns on htpasswd basic auth with these
	// user → password pairs.
	Users map[string]string
	// Token turns on bearer-token auth instead of basic auth (needs TLS and
	// Users). distribution 2.8 only validates tokens; it needs an external
	// token server, which the test runs in-process (tokenServer): a TLS
	// front at Host answers /token for Users (basic auth) with a JWT signed
	// by a key the registry trusts, and proxies everything else to the
	// registry on another loopback port. (The realm must be on the
	// registry's own host:port: ggcr refuses a loopback realm elsewhere.)
	Token bool
}

// Registry is a running CNCF distribution registry (Debian's
// docker-registry, 2.8) on a loopback port, stopped at the test's end.
type Registry struct {
	Host    string // "127.0.0.1:PORT"
	TLS     bool
	CAFile  string // PEM of the CA that signed its certificate (TLS only)
	CertDir string // a directory with ca.crt, for skopeo's --cert-dir (TLS only)
	Dir     string // its storage root
	LogFile string // its log: one access-log line per request

	cmd *exec.Cmd
}

// DockerRegistry is a Requirement: /usr/bin/docker-registry (Debian's
// docker-registry package) and htpasswd (apache2-utils) are installed.
func DockerRegistry() error {
	for _, tool := range []string{"docker-registry", "htpasswd"} {
		if err := Tool(tool)(); err != nil {
			return err
		}
	}
	return nil
}

// StartRegistry starts a registry as o says and waits until it answers.
// Skips (or fails under LODE_TEST_NO_SKIP=1) without docker-registry.
func StartRegistry(t testing.TB, o RegistryOptions) *Registry {
	t.Helper()
	Require(t, DockerRegistry)
	dir := t.TempDir()
	r := &Registry{Dir: filepath.Join(dir, "storage"), TLS: o.TLS, LogFile: filepath.Join(dir, "registry.log")}
	port := freePort(t)
	r.Host = fmt.Sprintf("127.0.0.1:%d", port)
	listen := r.Host
	var front *tokenServer
	if o.Token {
		if !o.TLS || len(o.Users) == 0 {
			t.Fatal("lodetest: RegistryOptions.Token needs TLS and Users")
		}
		listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		front = newTokenServer(t, dir, o.Users)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n")
	fmt.Fprintf(&cfg, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", r.Dir)
	fmt.Fprintf(&cfg, "http:\n  addr: %s\n  secret: lodetest\n", listen)
	if o.TLS && !o.Token {
		r.CertDir = filepath.Join(dir, "certs")
		cert, key := writeTestPKI(t, r.CertDir)
		r.CAFile = filepath.Join(r.CertDir, "ca.crt")
		fmt.Fprintf(&cfg, "  tls:\n    certificate: %s\n    key: %s\n", cert, key)
	}
	if o.TLS && o.Token {
		r.CertDir = filepath.Join(dir, "certs")
		cert, key := writeTestPKI(t, r.CertDir)
		r.CAFile = filepath.Join(r.CertDir, "ca.crt")
		fmt.Fprintf(&cfg, "auth:\n  token:\n    realm: https://%s/token\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			r.Host, tokenService, tokenIssuer, front.certFile)
		front.start(t, r.Host, "http://"+listen, cert, key)
	} else if len(o.Users) > 0 {
		var hp bytes.Buffer
		for u, p := range o.Users {
			out, err := exec.Command("htpasswd", "-Bbn", u, p).Output()
			if err != nil {
				t.Fatalf("htpasswd: %v", err)
			}
			hp.Write(bytes.TrimSpace(out))
			hp.WriteByte('\n')
		}
		path := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(path, hp.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: lodetest\n    path: %s\n", path)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(r.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command("docker-registry", "serve", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	// distribution reads REGISTRY_* variables as configuration overrides
	// (REGISTRY_AUTH_FILE, which clients use for credentials, would become
	// an "auth: file" section): start it without any.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") {
			r.cmd.Env = append(r.cmd.Env, kv)
		}
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			r.cmd.Process.Kill()
			r.cmd.Wait()
			logf.Close()
		})
	}
	t.Cleanup(stop)
	client := r.Client(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(r.LogFile)
			t.Fatalf("docker-registry on %s did not answer in 20 s (last error %v); log:\n%s", r.Host, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL returns the registry's base URL.
func (r *Registry) URL() string {
	if r.TLS {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// Client returns an HTTP client that trusts the registry's CA.
func (r *Registry) Client(t testing.TB) *http.Client {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if r.TLS {
		pem, err := os.ReadFile(r.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// skopeoTLS returns skopeo's TLS flags for the registry (prefix "dest-",
// "src-" or "").
func (r *Registry) skopeoTLS(prefix string) []string {
	if r.TLS {
		return []string{"--" + prefix + "cert-dir", r.CertDir}
	}
	return []string{"--" + prefix + "tls-verify=false"}
}

// Login runs `skopeo login --authfile authFile` against the registry, the
// way a user stores credentials.
func (r *Registry) Login(t testing.TB, authFile, user, password string) {
	t.Helper()
	Require(t, Tool("skopeo"))
	args := append([]string{"login", "--authfile", authFile, "--username", user, "--password-stdin"}, r.skopeoTLS("")...)
	args = append(args, r.Host)
	cmd := exec.Command("skopeo", args...)
	cmd.Stdin = strings.NewReader(password)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// PushImage copies src (a skopeo source such as oci:DIR:TAG) to REPO:TAG on
// the registry with `skopeo copy --all`, authenticating with authFile (may
// be ""), and returns the docker:// reference.
func (r *Registry) PushImage(t testing.TB, src, repoTag, authFile string) string {
	t.Helper()
	Require(t, Tool("skopeo"))
	dst := "docker://" + r.Host + "/" + repoTag
	args := []string{"copy", "--all", "--quiet"}
	if authFile != "" {
		args = append(args, "--dest-authfile", authFile)
	}
	args = append(args, r.skopeoTLS("dest-")...)
	args = append(args, src, dst)
	if out, err := exec.Command("skopeo", args...).CombinedOutput(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return dst
}

// BlobPath returns where the registry stores the blob with digest
// "sha256:HEX" (to corrupt it in a test).
func (r *Registry) BlobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Dir, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeTestPKI writes a CA (ca.crt) and a server certificate for 127.0.0.1
// and localhost signed by it into dir, returning the certificate and key
// paths. ECDSA P-256 keeps it fast.
func writeTestPKI(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lodetest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("ca.crt", "CERTIFICATE", caDER)
	// skopeo's --cert-dir treats *.cert + *.key as a client certificate pair,
	// so the server's files live one level down.
	srv := filepath.Join(dir, "server")
	os.MkdirAll(srv, 0o755)
	return write("server/registry.crt", "CERTIFICATE", der), write("server/registry.pem", "EC PRIVATE KEY", keyDER)
}
