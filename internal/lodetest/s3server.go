package lodetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// VersityGWVersion is the versitygw release .ci/s3.sh installs.
const VersityGWVersion = "v1.8.0"

// S3 describes a bucket on a running S3-compatible server (versitygw) on
// 127.0.0.1, and how to reach it.
type S3 struct {
	Endpoint  string // "http://127.0.0.1:PORT"
	Region    string
	AccessKey string
	SecretKey string
	Bucket    string

	srv *s3Server
}

// URL returns the s3:// URL of prefix in the bucket, with the endpoint,
// region and path-style addressing in the query. Credentials are not in it.
func (s S3) URL(prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&region=%s&path_style=true", s.Bucket, prefix, s.Endpoint, s.Region)
}

// Env returns the AWS_* environment variables that carry the credentials.
func (s S3) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey}
}

// Stop kills the server (SIGKILL) and waits for it, to test what clients do
// when their server dies. Only for a server from StartS3Server.
func (s S3) Stop() { s.srv.stop() }

// VersityGW is a Requirement: a versitygw binary can be found.
func VersityGW() error {
	_, err := versityGWPath()
	return err
}

// versityGWPath finds versitygw: $LODE_VERSITYGW, then versitygw in
// $LODE_TOOLS (default ~/.cache/lode-tools), then on PATH.
func versityGWPath() (string, error) {
	if p := os.Getenv("LODE_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("needs versitygw (LODE_VERSITYGW=%s: %v; run .ci/s3.sh)", p, err)
		}
		return p, nil
	}
	tools := os.Getenv("LODE_TOOLS")
	if tools == "" {
		if home, err := os.UserHomeDir(); err == nil {
			tools = filepath.Join(home, ".cache", "lode-tools")
		}
	}
	if tools != "" {
		p := filepath.Join(tools, "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("needs versitygw in $LODE_VERSITYGW, %s or PATH: run .ci/s3.sh", filepath.Join(tools, "versitygw"))
}

var (
	sharedMu  sync.Mutex
	shared    *s3Server
	bucketSeq atomic.Int64
)

// S3Server returns a new, empty bucket on a versitygw server shared by the
// whole test binary (started on first use). It skips t if versitygw is
// missing (fails it under LODE_TEST_NO_SKIP=1). Packages that call it stop
// the server in TestMain with StopS3Servers.
func S3Server(t testing.TB) S3 {
	t.Helper()
	Require(t, VersityGW)
	sharedMu.Lock()
	if shared == nil || shared.stopped() {
		srv, err := startS3Server()
		if err != nil {
			sharedMu.Unlock()
			t.Fatal(err)
		}
		shared = srv
	}
	srv := shared
	sharedMu.Unlock()
	return srv.newBucket(t)
}

// StartS3Server starts a versitygw server for t alone, with one empty
// bucket, and stops it when t ends. Use it for tests that stop the server.
func StartS3Server(t testing.TB) S3 {
	t.Helper()
	Require(t, VersityGW)
	srv, err := startS3Server()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.stop(); os.RemoveAll(srv.dir) })
	return srv.newBucket(t)
}

// StopS3Servers stops the shared server, if any, and removes its files.
// Call it from TestMain after m.Run.
func StopS3Servers() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.stop()
		os.RemoveAll(shared.dir)
		shared = nil
	}
}

type s3Server struct {
	endpoint, accessKey, secretKey string
	dir                            string
	cmd                            *exec.Cmd
	log                            *bytes.Buffer
	done                           chan struct{} // closed when the process has exited
	stopOnce                       sync.Once
}

const (
	s3Region    = "us-east-1"
	s3AccessKey = "lodetestaccess"
	s3SecretKey = "lodetestsecretkey0123456789"
)

// startS3Server runs versitygw on a free port of 127.0.0.1 over a new
// temporary directory and waits until it answers HTTP.
func startS3Server() (*s3Server, error) {
	bin, err := versityGWPath()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // the free port may be taken before versitygw binds it
		srv, err := tryStartS3Server(bin)
		if err == nil {
			return srv, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryStartS3Server(bin string) (*s3Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting versitygw: finding a free port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	dir, err := os.MkdirTemp("", "lode-s3-")
	if err != nil {
		return nil, fmt.Errorf("starting versitygw: %w", err)
	}
	srv := &s3Server{
		endpoint:  "http://" + addr,
		accessKey: s3AccessKey,
		secretKey: s3SecretKey,
		dir:       dir,
		log:       new(bytes.Buffer),
		done:      make(chan struct{}),
	}
	cmd := exec.Command(bin, "--quiet", "--port", addr, "--region", s3Region, "posix", dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+srv.accessKey, "ROOT_SECRET_KEY="+srv.secretKey)
	cmd.Stdout = &lockedWriter{w: srv.log}
	cmd.Stderr = cmd.Stdout
	// Die with the test binary even if nobody calls StopS3Servers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	srv.cmd = cmd
	go func() { cmd.Wait(); close(srv.done) }()
	if err := srv.waitReady(10 * time.Second); err != nil {
		srv.stop()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting versitygw on %s: %w\n%s", addr, err, srv.logText())
	}
	return srv, nil
}

func (s *s3Server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-s.done:
			return errors.New("versitygw exited")
		default:
		}
		resp, err := client.Get(s.endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil // any HTTP answer (403 without credentials) means it is serving
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer after %v: %w", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *s3Server) stopped() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *s3Server) stop() {
	s.stopOnce.Do(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
}

func (s *s3Server) logText() string {
	w := s.cmd.Stdout.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

// newBucket creates an empty bucket with a name unique in this process.
func (s *s3Server) newBucket(t testing.TB) S3 {
	t.Helper()
	b := S3{
		Endpoint:  s.endpoint,
		Region:    s3Region,
		AccessKey: s.accessKey,
		SecretKey: s.secretKey,
		Bucket:    fmt.Sprintf("lode-test-%d", bucketSeq.Add(1)),
		srv:       s,
	}
	c, err := minio.New(s.endpoint[len("http://"):], &minio.Options{
		Creds:  credentials.NewStaticV4(s.accessKey, s.secretKey, ""),
		Region: s3Region,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, b.Bucket, minio.MakeBucketOptions{Region: s3Region}); err != nil {
		t.Fatalf("creating bucket %s on %s: %v\n%s", b.Bucket, s.endpoint, err, s.logText())
	}
	return b
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
