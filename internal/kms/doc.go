// Package kms adapts AWS KMS (aws-sdk-go-v2 service/kms) to manifest.KMS, so
// that a tenant's master key can stay in KMS: each image's data key is made
// by GenerateDataKey and unwrapped by Decrypt, bound to the tenant and the
// image by the encryption context (manifest.EncryptionContext). The key
// never reaches the worker's disk; only the keyring entry naming it does.
//
// It owns the mapping of KMS failures to manifest's sentinels: a refusal
// (invalid ciphertext, wrong context, disabled or unknown key, access
// denied) is manifest.ErrWrongKey; anything that says nothing about the
// wrapped key (connection refused, timeout, throttling, a 5xx) is
// manifest.ErrKMSUnavailable. Calls are bounded (Config.Timeout, two
// attempts) so that an outage fails new opens fast instead of hanging a
// container start; images already open do not call KMS at all.
//
// Calls are signed with the S3 store's credential chain (minio-go's
// providers, s3.CredentialChain) plus roles, adapted to the SDK's
// CredentialsProvider; the SDK's configuration loader
// (aws-sdk-go-v2/config) is not used: with the STS, SSO and sign-in clients
// it links, its package initialization cost every lode command ~4.5 ms of
// its start, whatever the command (docs/coldstart.md). What it read and
// this does not: ~/.aws/config (region, role_arn and SSO profiles).
//
// Tests run against local-kms (github.com/nsmithuk/local-kms), a real KMS
// protocol server that lodetest.KMSServer starts.
package kms
