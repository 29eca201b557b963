package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/certs"
)

// exposeOptions are the access flags of a block export (serve-nbd,
// serve-vhost): the unix socket's mode and, for NBD over TCP, TLS.
type exposeOptions struct {
	socketMode             string
	tlsCert, tlsKey, tlsCA string
	insecure               bool
}

func (o *exposeOptions) bind(f *pflag.FlagSet, withTLS bool) {
	f.StringVar(&o.socketMode, "socket-mode", "0600", "mode of the unix socket (octal); 0600 lets only its owner connect")
	if !withTLS {
		return
	}
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve NBD over TLS (NBD_OPT_STARTTLS, required of every client) with this certificate (PEM)")
	f.StringVar(&o.tlsKey, "tls-key", "", "the --tls-cert key (PEM)")
	f.StringVar(&o.tlsCA, "tls-ca", "", "CA that clients' certificates must chain to (role lode-nbd: `lode cache certs --nbd`)")
	f.BoolVar(&o.insecure, "insecure-no-tls", false, "allow a TCP listen address other than loopback without TLS: anyone who can connect reads the disk")
}

func (o *exposeOptions) mode() (os.FileMode, error) {
	if o.socketMode == "" {
		return 0o600, nil
	}
	m, err := strconv.ParseUint(o.socketMode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("--socket-mode %q: want an octal mode such as 0600", o.socketMode)
	}
	return os.FileMode(m), nil
}

// tls returns the export's TLS configuration, or nil without --tls-cert.
func (o *exposeOptions) tls() (*tls.Config, error) {
	if o.tlsCert == "" && o.tlsKey == "" && o.tlsCA == "" {
		return nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" || o.tlsCA == "" {
		return nil, errors.New("--tls-cert, --tls-key and --tls-ca go together: without a CA, clients would not authenticate")
	}
	r, err := certs.NewReloader(certs.Files{Cert: o.tlsCert, Key: o.tlsKey, CA: o.tlsCA})
	if err != nil {
		return nil, err
	}
	return r.ServerConfig(certs.RoleNBD), nil
}
