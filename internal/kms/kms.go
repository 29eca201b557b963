package kms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/lode-dev/lode/internal/manifest"
)

// Config tunes the client. The zero value selects the defaults.
type Config struct {
	// Timeout bounds one KMS call, retries included (default 5s: a KMS
	// answers in milliseconds; a start should fail with a clear error, not
	// wait out the SDK's backoff).
	Timeout time.Duration
	// Attempts per call (default 2: one retry of a transient error).
	Attempts int
}

// Client is a manifest.KMS over one AWS KMS endpoint. It is safe for
// concurrent use.
type Client struct {
	c   *kms.Client
	cfg Config
}

var _ manifest.KMS = (*Client)(nil)

// Dial returns a client for the KMS of entry e with the default Config: the
// AWS SDK's default credential chain and region (environment, shared
// config, instance role), overridden by e.Region and e.Endpoint. It has the
// signature manifest.FileKeyring.SetKMS wants.
func Dial(e manifest.KMSKey) (manifest.KMS, error) { return New(context.Background(), e, Config{}) }

// New returns a client for the KMS of entry e.
func New(ctx context.Context, e manifest.KMSKey, c Config) (*Client, error) {
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Attempts <= 0 {
		c.Attempts = 2
	}
	opts := []func(*config.LoadOptions) error{config.WithRetryMaxAttempts(c.Attempts)}
	if e.Region != "" {
		opts = append(opts, config.WithRegion(e.Region))
	} else if os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
		opts = append(opts, config.WithRegion("us-east-1"))
	}
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration for KMS key %s: %w", e.KeyID, err)
	}
	kc := kms.NewFromConfig(ac, func(o *kms.Options) {
		if e.Endpoint != "" {
			o.BaseEndpoint = aws.String(e.Endpoint)
		}
	})
	return &Client{c: kc, cfg: c}, nil
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
