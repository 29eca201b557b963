package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Role is what a certificate allows its holder to be.
type Role string

// Roles (the subject OU of lode's certificates).
const (
	RoleNode   Role = "lode-node"   // a cache node: serves shards
	RoleWorker Role = "lode-worker" // a worker: reads, fills, takes leases
	RoleNBD    Role = "lode-nbd"    // an NBD export's server or client
	RoleCA     Role = "lode-ca"
)

// Sentinel errors.
var (
	// ErrRole: a peer's certificate is valid but not of the role required.
	ErrRole = errors.New("certificate has the wrong role")
)

// Files names a TLS identity's PEM files: the certificate (chain), its key,
// and the CA that peers' certificates must chain to.
type Files struct {
	Cert, Key, CA string
}

// InDir returns the files "<name>.crt", "<name>.key" and "ca.crt" in dir,
// as Issue writes them.
func InDir(dir, name string) Files {
	return Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(dir, "ca.crt")}
}

// Reloader holds a certificate, its key and a CA pool read from Files, and
// reads them again when any file's modification time or size changes. It
// is safe for concurrent use.
type Reloader struct {
	f     Files
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	checked time.Time
	stamp   []fileStamp
	cert    *tls.Certificate
	pool    *x509.CertPool
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// NewReloader reads f (CA optional) and returns a Reloader over it.
func NewReloader(f Files) (*Reloader, error) {
	r := &Reloader{f: f, every: time.Second, now: time.Now}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reloader) stamps() ([]fileStamp, error) {
	var out []fileStamp
	for _, p := range []string{r.f.Cert, r.f.Key, r.f.CA} {
		if p == "" {
			out = append(out, fileStamp{})
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("reading TLS file: %w", err)
		}
		out = append(out, fileStamp{fi.ModTime(), fi.Size()})
	}
	return out, nil
}

// load reads the files; the caller holds mu or owns r.
func (r *Reloader) load() error {
	st, err := r.stamps()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.f.Cert, r.f.Key)
	if err != nil {
		return fmt.Errorf("loading certificate %s and key %s: %w", r.f.Cert, r.f.Key, err)
	}
	var pool *x509.CertPool
	if r.f.CA != "" {
		b, err := os.ReadFile(r.f.CA)
		if err != nil {
			return fmt.Errorf("loading CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("loading CA %s: no PEM certificate in it", r.f.CA)
		}
	}
	r.cert, r.pool, r.stamp, r.checked = &cert, pool, st, r.now()
	return nil
}

// current returns the certificate and pool, reloading first if the files
// changed (checked at most once per r.every). A failed reload (a file half
// written) keeps the previous identity and is retried at the next check.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checked) >= r.every {
		r.checked = now
		if st, err := r.stamps(); err == nil && !slices.Equal(st, r.stamp) {
			r.load()
		}
	}
	return r.cert, r.pool
}

// Certificate returns the current certificate.
func (r *Reloader) Certificate() *tls.Certificate {
	c, _ := r.current()
	return c
}

// ServerConfig returns a TLS configuration for a server with r's identity
// that requires a client certificate chaining to r's CA with role client.
// The CA and the certificate are re-read when they rotate.
func (r *Reloader) ServerConfig(client Role) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := r.current()
		if pool == nil {
			return nil, errors.New("no CA configured to check client certificates")
		}
		return &tls.Config{
			MinVersion:            tls.VersionTLS12,
			Certificates:          []tls.Certificate{*cert},
			ClientAuth:            tls.RequireAndVerifyClientCert,
			ClientCAs:             pool,
			VerifyPeerCertificate: requireRole(client, x509.ExtKeyUsageClientAuth),
		}, nil
	}
	return base
}

// ClientConfig returns a TLS configuration for a client with r's identity
// that accepts only a server certificate chaining to r's CA with role
// server. serverName is checked against the certificate's SANs unless
// empty (then only the chain and role are checked: fleet nodes are dialled
// by address, and their certificate may not name every address).
func (r *Reloader) ClientConfig(server Role, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, _ := r.current()
			return c, nil
		},
		// The chain is verified here, against the CA as it is now, so a
		// rotated CA applies without a restart.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, pool := r.current()
			if pool == nil {
				return errors.New("no CA configured to check the server")
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: serverName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("verifying server certificate: %w", err)
			}
			return checkRole(leaf, server)
		},
	}
}

// requireRole checks the verified client chain's leaf for role and usage.
func requireRole(role Role, usage x509.ExtKeyUsage) func([][]byte, [][]*x509.Certificate) error {
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if len(chains) == 0 || len(chains[0]) == 0 {
			return errors.New("no verified client certificate")
		}
		leaf := chains[0][0]
		if !slices.Contains(leaf.ExtKeyUsage, usage) {
			return fmt.Errorf("certificate %q lacks extended key usage %v: %w", leaf.Subject, usage, ErrRole)
		}
		return checkRole(leaf, role)
	}
}

func checkRole(c *x509.Certificate, role Role) error {
	if slices.Contains(c.Subject.OrganizationalUnit, string(role)) {
		return nil
	}
	return fmt.Errorf("certificate %q has roles %v, want %s: %w", c.Subject, c.Subject.OrganizationalUnit, role, ErrRole)
}

// PeerRole returns the role of a verified peer certificate (its lode OU).
func PeerRole(c *x509.Certificate) Role {
	for _, ou := range c.Subject.OrganizationalUnit {
		switch Role(ou) {
		case RoleNode, RoleWorker, RoleNBD, RoleCA:
			return Role(ou)
		}
	}
	return ""
}

// Issue writes, into dir, a certificate and key for name with role, signed
// by the CA in dir ("ca.crt", "ca.key"), which it creates first if absent.
// hosts become SANs (IP addresses or DNS names). Keys are ECDSA P-256,
// mode 0600; certificates are valid for validity from now.
func Issue(dir, name string, role Role, hosts []string, validity time.Duration) (Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, err
	}
	caCert, caKey, err := loadOrCreateCA(dir, validity)
	if err != nil {
		return Files{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, err
	}
	tmpl := template(name, role, validity)
	switch role {
	case RoleNode:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case RoleWorker:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	default:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("issuing certificate for %s: %w", name, err)
	}
	f := InDir(dir, name)
	if err := writeKey(f.Key, key); err != nil {
		return Files{}, err
	}
	if err := writePEM(f.Cert, "CERTIFICATE", der, 0o644); err != nil {
		return Files{}, err
	}
	return f, nil
}

func template(name string, role Role, validity time.Duration) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"lode"}, OrganizationalUnit: []string{string(role)}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(validity),
	}
}

func loadOrCreateCA(dir string, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cp, kp := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if cb, err := os.ReadFile(cp); err == nil {
		kb, err := os.ReadFile(kp)
		if err != nil {
			return nil, nil, fmt.Errorf("reading CA key: %w", err)
		}
		cblk, _ := pem.Decode(cb)
		kblk, _ := pem.Decode(kb)
		if cblk == nil || kblk == nil {
			return nil, nil, fmt.Errorf("CA %s or its key: not PEM", cp)
		}
		c, err := x509.ParseCertificate(cblk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("parsing CA %s: %w", cp, err)
		}
		k, err := x509.ParseECPrivateKey(kblk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("parsing CA key %s (lode issues ECDSA keys): %w", kp, err)
		}
		return c, k, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := template("lode fleet CA", RoleCA, 10*validity)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writeKey(kp, key); err != nil {
		return nil, nil, err
	}
	if err := writePEM(cp, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

// writePEM writes atomically (temporary file, rename), so a Reloader never
// reads half a file.
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := pem.Encode(tmp, &pem.Block{Type: typ, Bytes: der}); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
