package kms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store/s3"
)

// Config tunes the client. The zero value selects the defaults.
type Config struct {
	// Timeout bounds one KMS call, retries included (default 5s: a KMS
	// answers in milliseconds; a start should fail with a clear error, not
	// wait out the SDK's backoff).
	Timeout time.Duration
	// Attempts per call (default 2: one retry of a transient error).
	Attempts int
	// Credentials sign the calls (default: Chain()).
	Credentials *credentials.Credentials
}

// Client is a manifest.KMS over one AWS KMS endpoint. It is safe for
// concurrent use.
type Client struct {
	c   *kms.Client
	cfg Config
}

var _ manifest.KMS = (*Client)(nil)

// Environment variables the client reads, as the AWS CLI and SDKs name
// them.
const (
	EnvRegion        = "AWS_REGION"
	EnvDefaultRegion = "AWS_DEFAULT_REGION"
	EnvEndpoint      = "AWS_ENDPOINT_URL_KMS" // the service-specific one only: AWS_ENDPOINT_URL often names the S3 server
)

// DefaultRegion is the region of a keyring entry that names none when the
// environment names none either.
const DefaultRegion = "us-east-1"

// Chain returns the credentials KMS calls are signed with by default: the
// S3 store's chain (s3.CredentialChain) with the instance or container
// role: the AWS_* environment, the shared credentials file
// ($AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials, in profile
// $AWS_PROFILE, else "default", which may use credential_process;
// ~/.aws/config is not read), then the EC2 instance role, ECS/EKS
// container credentials or web identity (IRSA).
//
// AWS_EC2_METADATA_DISABLED=true leaves the roles out unless a container
// or web-identity variable names one, so that a host without keys fails
// at once instead of waiting for an EC2 metadata endpoint that is not
// there.
func Chain() *credentials.Credentials {
	iam := !strings.EqualFold(os.Getenv("AWS_EC2_METADATA_DISABLED"), "true")
	for _, v := range []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		iam = iam || os.Getenv(v) != ""
	}
	return s3.CredentialChain(os.Getenv(s3.EnvCredentialsFile), os.Getenv(s3.EnvProfile), iam)
}

// Dial returns a client for the KMS of entry e with the default Config. It
// has the signature manifest.FileKeyring.SetKMS wants.
func Dial(e manifest.KMSKey) (manifest.KMS, error) { return New(context.Background(), e, Config{}) }

// New returns a client for the KMS of entry e: in e.Region (else
// $AWS_REGION, $AWS_DEFAULT_REGION, DefaultRegion), at e.Endpoint (else
// $AWS_ENDPOINT_URL_KMS, else the region's AWS endpoint).
func New(ctx context.Context, e manifest.KMSKey, c Config) (*Client, error) {
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Attempts <= 0 {
		c.Attempts = 2
	}
	if c.Credentials == nil {
		c.Credentials = Chain()
	}
	region := first(e.Region, os.Getenv(EnvRegion), os.Getenv(EnvDefaultRegion), DefaultRegion)
	endpoint := first(e.Endpoint, os.Getenv(EnvEndpoint))
	kc := kms.New(kms.Options{
		Region:           region,
		Credentials:      chainProvider{c.Credentials}, // no aws.CredentialsCache: it would keep a rotated file's old keys
		RetryMaxAttempts: c.Attempts,
	}, func(o *kms.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
	return &Client{c: kc, cfg: c}, nil
}

func first(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// ErrNoCredentials: no source in the chain had keys.
var ErrNoCredentials = errors.New("no AWS credentials for KMS (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a shared credentials file, or run with an instance, container or web-identity role)")

// chainProvider adapts minio-go's credentials (the chain the S3 store
// uses) to the AWS SDK's CredentialsProvider. The SDK asks it on every
// call; minio-go's chain caches the keys and reads them again when they
// expire or the shared credentials file changes, so a rotated file signs
// the next KMS call, as it does the next S3 request. The SDK's own loader
// (aws-sdk-go-v2/config) is not linked: its package initialization cost
// every lode command ~4.5 ms of its start (docs/coldstart.md).
type chainProvider struct{ c *credentials.Credentials }

func (p chainProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	v, err := p.c.GetWithContext(&credentials.CredContext{Context: ctx})
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("getting AWS credentials for KMS: %w", err)
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return aws.Credentials{}, ErrNoCredentials
	}
	return aws.Credentials{AccessKeyID: v.AccessKeyID, SecretAccessKey: v.SecretAccessKey, SessionToken: v.SessionToken,
		Source: "lode", CanExpire: !v.Expiration.IsZero(), Expires: v.Expiration}, nil
}

// GenerateDataKey implements manifest.KMS with an AES_256 data key.
func (c *Client) GenerateDataKey(ctx context.Context, keyID string, encCtx map[string]string) ([]byte, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	out, err := c.c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(keyID),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: encCtx,
	})
	if err != nil {
		return nil, nil, classify("GenerateDataKey", keyID, err)
	}
	return out.Plaintext, out.CiphertextBlob, nil
}

// Decrypt implements manifest.KMS. The key is not named in the request:
// KMS reads it from the wrapped blob and reports it, and the keyring checks
// it against the tenant's entry (current or previous keys).
func (c *Client) Decrypt(ctx context.Context, wrapped []byte, encCtx map[string]string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	out, err := c.c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: wrapped, EncryptionContext: encCtx})
	if err != nil {
		return nil, "", classify("Decrypt", "", err)
	}
	return out.Plaintext, aws.ToString(out.KeyId), nil
}

// classify wraps err in manifest.ErrWrongKey when KMS refused the request
// for reasons of the key, ciphertext or context, and in
// manifest.ErrKMSUnavailable otherwise.
func classify(op, keyID string, err error) error {
	what := "KMS " + op
	if keyID != "" {
		what += " with key " + keyID
	}
	var (
		invalid  *types.InvalidCiphertextException
		incorr   *types.IncorrectKeyException
		notFound *types.NotFoundException
		disabled *types.DisabledException
		state    *types.KMSInvalidStateException
		usage    *types.InvalidKeyUsageException
	)
	if errors.As(err, &invalid) || errors.As(err, &incorr) || errors.As(err, &notFound) ||
		errors.As(err, &disabled) || errors.As(err, &state) || errors.As(err, &usage) {
		return fmt.Errorf("%s: refused (wrong key, encryption context or damaged ciphertext): %w: %w", what, manifest.ErrWrongKey, err)
	}
	var api smithy.APIError
	if errors.As(err, &api) && (api.ErrorCode() == "AccessDeniedException" || api.ErrorCode() == "ValidationException") {
		return fmt.Errorf("%s: refused: %w: %w", what, manifest.ErrWrongKey, err)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne):
		return fmt.Errorf("%s: KMS did not answer: %w: %w", what, manifest.ErrKMSUnavailable, err)
	}
	return fmt.Errorf("%s: %w: %w", what, manifest.ErrKMSUnavailable, err)
}
