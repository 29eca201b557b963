package lodetest

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// LocalKMSVersion is the local-kms module version .ci/kms.sh installs.
const LocalKMSVersion = "v0.0.0-20260228092603-2a5e92d09ab6"

// KMSKey is a symmetric key to seed a local-kms server with. Several
// backing keys simulate a key that KMS has rotated: the last one wraps new
// data keys, every one still unwraps what it wrapped.
type KMSKey struct {
	ID          string     // a UUID
	BackingKeys [][32]byte // key material, oldest first
}

// KMS is a running local-kms server (github.com/nsmithuk/local-kms), a real
// AWS KMS protocol server, seeded with keys.
type KMS struct {
	Endpoint string // "http://127.0.0.1:PORT"
	Region   string
	Account  string

	cmd  *exec.Cmd
	done chan struct{}
	log  *lockedWriter
}

// ARN returns the ARN KMS reports for key id.
func (k *KMS) ARN(id string) string {
	return fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", k.Region, k.Account, id)
}

// Stop kills the server and waits for it (an outage, for tests).
func (k *KMS) Stop() {
	if k.cmd.ProcessState == nil {
		k.cmd.Process.Kill()
		<-k.done
	}
}

// LocalKMS is a Requirement: a local-kms binary can be found.
func LocalKMS() error {
	_, err := toolPath("local-kms", "LODE_LOCAL_KMS", ".ci/kms.sh")
	return err
}

// StartKMS starts local-kms for t on a free port, seeded with keys, and
// stops it when t ends. It sets AWS credentials in t's environment (local-
// kms accepts any; the SDK needs some to sign), so t must not be parallel.
//
// local-kms listens on every interface (it takes only a port); the port is
// chosen by the kernel and the server lives only as long as the test.
func StartKMS(t testing.TB, keys ...KMSKey) *KMS {
	t.Helper()
	Require(t, LocalKMS)
	bin, _ := toolPath("local-kms", "LODE_LOCAL_KMS", ".ci/kms.sh")
	t.Setenv("AWS_ACCESS_KEY_ID", "lodetest")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "lodetest-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	dir := t.TempDir()
	var seed strings.Builder
	seed.WriteString("Keys:\n  Symmetric:\n    Aes:\n")
	for _, k := range keys {
		fmt.Fprintf(&seed, "      - Metadata:\n          KeyId: %s\n        BackingKeys:\n", k.ID)
		for _, b := range k.BackingKeys {
			fmt.Fprintf(&seed, "          - %s\n", hex.EncodeToString(b[:]))
		}
	}
	seedPath := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seedPath, []byte(seed.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	k := &KMS{Region: "eu-west-2", Account: "111122223333", done: make(chan struct{}), log: &lockedWriter{w: new(bytes.Buffer)}}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT=0", "KMS_REGION="+k.Region, "KMS_ACCOUNT_ID="+k.Account,
		"KMS_DATA_PATH="+filepath.Join(dir, "data"), "KMS_SEED_PATH="+seedPath)
	cmd.Stdout, cmd.Stderr = k.log, k.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	k.cmd = cmd
	go func() { cmd.Wait(); close(k.done) }()
	t.Cleanup(k.Stop)
	// It logs the port it bound ("Local KMS started on 0.0.0.0:PORT").
	re := regexp.MustCompile(`started on [0-9.]*:(\d+)`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		k.log.mu.Lock()
		m := re.FindStringSubmatch(k.log.w.String())
		k.log.mu.Unlock()
		if m != nil {
			k.Endpoint = "http://127.0.0.1:" + m[1]
			return k
		}
		select {
		case <-k.done:
			t.Fatalf("local-kms exited:\n%s", k.log.w.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("local-kms did not start in 10s:\n%s", k.log.w.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// toolPath finds a tool built from the Go module proxy: $env, then name in
// $LODE_TOOLS (default ~/.cache/lode-tools), then on PATH.
func toolPath(name, env, script string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("needs %s (%s=%s: %v; run %s)", name, env, p, err, script)
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
		p := filepath.Join(tools, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("needs %s in $%s, %s or PATH: run %s", name, env, filepath.Join(tools, name), script)
}
