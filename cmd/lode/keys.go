package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/manifest"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage the keyring: tenant keys and the store secret",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "create",
		Short: "Create the keyring if needed and a key for --tenant",
		Long: `Create makes the keyring file (mode 0600) with a fresh store secret if it does
not exist, then adds a new key-encryption key for the tenant (--tenant, default
"default") unless it already has one. Keep the file safe: without it no image of
the tenant can be opened, and the store secret is what stops others confirming
that a known chunk is stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runKeysCreate(stdout)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the tenants that have keys in the keyring",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			kr, err := openKeyring()
			if err != nil {
				return err
			}
			for _, t := range kr.Tenants() {
				fmt.Fprintln(stdout, t)
			}
			return nil
		},
	})
	var out string
	export := &cobra.Command{
		Use:   "export",
		Short: "Write a worker keyring: only the --tenant keys (A,B,…), no store secret",
		Long: `Export writes a new keyring file (mode 0600) for a worker: the keys of the
tenants named by --tenant (comma-separated) and nothing else. It has no store
secret, which only builders need; worker commands (agent, mount, run,
serve-nbd, serve-vhost, vm) refuse a keyring that holds it unless
--allow-store-secret.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			kr, err := openKeyring()
			if err != nil {
				return err
			}
			tenants := strings.Split(global.tenant, ",")
			if _, err := kr.Export(out, tenants); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote worker keyring %s for %s\n", out, strings.Join(tenants, ", "))
			return nil
		},
	}
	var ke manifest.KMSKey
	kmsCmd := &cobra.Command{
		Use:   "kms --key-id ID",
		Short: "Keep --tenant's key in AWS KMS: add it, or rotate it to a new KMS key",
		Long: `Kms records that the tenant's master key is a KMS key (key ID or ARN): each
image's data key is then generated and unwrapped by KMS (GenerateDataKey,
Decrypt) with an encryption context naming tenant and image, and the key never
reaches a worker's disk. For a tenant already in KMS it rotates: new images use
--key-id, and manifests the previous keys wrapped still open. Calls are signed
with the S3 store's credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else
the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), else
the instance, container or web-identity role; region from --region, else
AWS_REGION, AWS_DEFAULT_REGION, us-east-1; endpoint from --endpoint, else
AWS_ENDPOINT_URL_KMS (docs/operations.md, "Credentials").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			kr, err := openKeyring()
			if err != nil {
				return err
			}
			if err := kr.SetKMSKey(global.tenant, ke); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "tenant %s: KMS key %s\n", global.tenant, ke.KeyID)
			return nil
		},
	}
	kmsCmd.Flags().StringVar(&ke.KeyID, "key-id", "", "the KMS key (key ID or ARN, not an alias)")
	kmsCmd.Flags().StringVar(&ke.Region, "region", "", "the KMS region (default: from the AWS environment)")
	kmsCmd.Flags().StringVar(&ke.Endpoint, "endpoint", "", "a KMS endpoint URL other than AWS's")
	kmsCmd.MarkFlagRequired("key-id")
	cmd.AddCommand(kmsCmd)
	export.Flags().StringVar(&out, "out", "", "the worker keyring file to write (must not exist)")
	export.MarkFlagRequired("out")
	cmd.AddCommand(export)
	return cmd
}

func runKeysCreate(out io.Writer) error {
	path := global.keyringPath()
	created, added, err := manifest.EnsureTenantKey(path, global.tenant)
	if created {
		fmt.Fprintf(out, "created keyring %s\n", path)
	}
	switch {
	case err != nil:
		return err
	case added:
		fmt.Fprintf(out, "added key for tenant %s to %s\n", global.tenant, path)
	default:
		fmt.Fprintf(out, "tenant %s already has a key in %s\n", global.tenant, path)
	}
	return nil
}
