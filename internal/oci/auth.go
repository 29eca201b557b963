package oci

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Credentials for docker:// sources come from the files users already have,
// in the order containers-auth.json(5) gives (skopeo, podman, buildah), then
// Docker's:
//
//  1. --authfile FILE (RemoteOptions.AuthFile), as skopeo's flag;
//  2. $REGISTRY_AUTH_FILE;
//  3. $XDG_RUNTIME_DIR/containers/auth.json (where `skopeo login` writes);
//  4. $XDG_CONFIG_HOME/containers/auth.json (default ~/.config);
//  5. $DOCKER_CONFIG/config.json (default ~/.docker/config.json), where
//     `docker login` writes.
//
// The first file with an entry for the registry wins. An entry may hold the
// credentials ("auth", or "username"/"password", or an identity token) or name a
// credential helper ("credHelpers": {"HOST": "NAME"} or "credsStore": the
// docker-credential-NAME program is run), in any of these files. Entries
// are looked up by "host/repo/path" prefixes, longest first, then "host".
//
// ggcr's authn.DefaultKeychain (v0.22.1) reads only one of these files: the
// Docker config when it exists (even when it has no entry for the registry),
// else REGISTRY_AUTH_FILE, else one containers auth.json. It never reaches a
// `skopeo login` on a machine that also has a Docker config, so this chain
// is assembled here from docker/cli's config parser (which ggcr also uses).

// Keychain returns the credential chain described above, with authFile
// (may be "") first.
func Keychain(authFile string) authn.Keychain {
	return &fileChain{authFile: authFile}
}

type fileChain struct{ authFile string }

// files lists the chain's files in order ("" entries skipped by callers).
func (c *fileChain) files() []string {
	home, _ := os.UserHomeDir()
	var fs []string
	fs = append(fs, c.authFile, os.Getenv("REGISTRY_AUTH_FILE"))
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		fs = append(fs, filepath.Join(d, "containers", "auth.json"))
	}
	cfgHome := os.Getenv("XDG_CONFIG_HOME")
	if cfgHome == "" && home != "" {
		cfgHome = filepath.Join(home, ".config")
	}
	if cfgHome != "" {
		fs = append(fs, filepath.Join(cfgHome, "containers", "auth.json"))
	}
	dockerDir := os.Getenv("DOCKER_CONFIG")
	if dockerDir == "" && home != "" {
		dockerDir = filepath.Join(home, ".docker")
	}
	if dockerDir != "" {
		fs = append(fs, filepath.Join(dockerDir, config.ConfigFileName))
	}
	return fs
}

// Resolve implements authn.Keychain.
func (c *fileChain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	a, _, err := c.resolve(r)
	return a, err
}

// resolve returns the authenticator for r and the file it came from ("" for
// anonymous).
func (c *fileChain) resolve(r authn.Resource) (authn.Authenticator, string, error) {
	keys := authKeys(r)
	for _, f := range c.files() {
		if f == "" {
			continue
		}
		fh, err := os.Open(f)
		if os.IsNotExist(err) {
			if f == c.authFile {
				return nil, "", fmt.Errorf("--authfile %s: %w", f, err)
			}
			continue
		}
		if err != nil {
			return nil, "", err
		}
		cf, err := config.LoadFromReader(fh)
		fh.Close()
		if err != nil {
			return nil, "", fmt.Errorf("parsing credentials file %s: %w", f, err)
		}
		cf.Filename = f
		for _, k := range keys {
			ac, err := lookupAuth(cf, k)
			if err != nil {
				return nil, "", fmt.Errorf("credentials for %s in %s: %w", k, f, err)
			}
			if ac != (types.AuthConfig{}) {
				return authn.FromConfig(authn.AuthConfig{
					Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
					IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
				}), f + " (" + k + ")", nil
			}
		}
	}
	return authn.Anonymous, "", nil
}

// lookupAuth returns the entry for key, asking a credential helper if the
// file names one; the zero value if there is none.
func lookupAuth(cf *configfile.ConfigFile, key string) (types.AuthConfig, error) {
	_, helper := cf.CredentialHelpers[key]
	_, plain := cf.AuthConfigs[key]
	if !helper && !plain && cf.CredentialsStore == "" {
		return types.AuthConfig{}, nil
	}
	ac, err := cf.GetAuthConfig(key)
	if err != nil {
		return types.AuthConfig{}, err
	}
	ac.ServerAddress = "" // set by GetAuthConfig; not a credential
	return ac, nil
}

// authKeys are the entry names tried for r, most specific first.
func authKeys(r authn.Resource) []string {
	host := r.RegistryStr()
	var keys []string
	if repo, ok := r.(name.Repository); ok {
		for p := repo.RepositoryStr(); p != "" && p != "."; p = filepath.Dir(p) {
			keys = append(keys, host+"/"+p)
			if !strings.Contains(p, "/") {
				break
			}
		}
	}
	keys = append(keys, host)
	if host == name.DefaultRegistry {
		keys = append(keys, authn.DefaultAuthKey, "docker.io")
	}
	return keys
}

// resolveAuth resolves kc for repo, saying where the credentials came from
// when kc is this package's chain.
func resolveAuth(ctx context.Context, kc authn.Keychain, repo name.Repository) (authn.Authenticator, string, error) {
	if fc, ok := kc.(*fileChain); ok {
		return fc.resolve(repo)
	}
	a, err := authn.Resolve(ctx, kc, repo)
	return a, "", err
}
