package s3

import (
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Credentials rotation (issue #9): keys given in the Config (from
// AWS_ACCESS_KEY_ID and friends) are fixed for the process's life, since a
// process's environment does not change; keys in the shared credentials
// file are re-read whenever the file changes, and instance-profile keys
// (Config.IAM) are refreshed by minio-go before they expire, so rotating
// either needs no restart.

// EnvCredentialsFile and EnvProfile select the shared credentials file and
// its profile, as the AWS CLI and SDKs name them.
const (
	EnvCredentialsFile = "AWS_SHARED_CREDENTIALS_FILE"
	EnvProfile         = "AWS_PROFILE"
)

// credentialsFile returns the shared credentials file c names, else
// $HOME/.aws/credentials ("" when there is no home).
func (c Config) credentialsFile() string {
	if c.CredentialsFile != "" {
		return c.CredentialsFile
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ""
	}
	return filepath.Join(home, ".aws", "credentials")
}

// CredentialChain is the chain an s3 Config without keys signs with, for
// other AWS clients of the same process (internal/kms signs KMS calls with
// it): the AWS_* environment, the shared credentials file ("" means
// $HOME/.aws/credentials; re-read when it changes) in profile ("" means
// $AWS_PROFILE, else "default"), and with iam the instance or container
// role (EC2 metadata, ECS/EKS credential endpoints, web identity); its
// value has no keys when none of them has any.
func CredentialChain(file, profile string, iam bool) *credentials.Credentials {
	return Config{CredentialsFile: file, Profile: profile, IAM: iam}.credentials()
}

// credentials returns what signs c's requests: c's static keys when it has
// any; else a chain of the AWS_* environment, the shared credentials file
// (re-read when it changes) and, with c.IAM, the instance or container
// role; anonymous when none of them has keys.
func (c Config) credentials() *credentials.Credentials {
	if c.AccessKey != "" || c.SecretKey != "" || c.SessionToken != "" {
		return credentials.NewStaticV4(c.AccessKey, c.SecretKey, c.SessionToken)
	}
	providers := []credentials.Provider{&credentials.EnvAWS{}}
	if f := c.credentialsFile(); f != "" {
		providers = append(providers, newReloadingFile(f, c.Profile))
	}
	if c.IAM {
		providers = append(providers, &credentials.IAM{})
	}
	return credentials.NewChainCredentials(providers)
}

// reloadingFile is minio-go's FileAWSCredentials (which caches what it read
// until the process ends) made to report its keys expired when the file's
// modification time, size or inode changed since it was read, so the next
// request re-reads it. The check is a stat per request, negligible beside a
// request's round trip.
type reloadingFile struct {
	path string

	mu    sync.Mutex
	inner credentials.FileAWSCredentials
	read  fileStamp // the file as it was when last read
}

type fileStamp struct {
	ok    bool
	mtime time.Time
	size  int64
	ino   uint64
}

func newReloadingFile(path, profile string) *reloadingFile {
	return &reloadingFile{path: path, inner: credentials.FileAWSCredentials{Filename: path, Profile: profile}}
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{ok: true, mtime: fi.ModTime(), size: fi.Size(), ino: inode(fi)}
}

var _ credentials.Provider = (*reloadingFile)(nil)

func (r *reloadingFile) RetrieveWithCredContext(cc *credentials.CredContext) (credentials.Value, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.read = stampOf(r.path)
	return r.inner.RetrieveWithCredContext(cc)
}

// Retrieve is RetrieveWithCredContext without a context.
func (r *reloadingFile) Retrieve() (credentials.Value, error) { return r.RetrieveWithCredContext(nil) }

// IsExpired reports true when the file changed since it was read, or when
// the keys it held carry an expiry that passed.
func (r *reloadingFile) IsExpired() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return stampOf(r.path) != r.read || r.inner.IsExpired()
}
