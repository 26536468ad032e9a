package grpcutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// TLSFiles are the PEM files of one end of a mutually authenticated TLS
// connection: its own certificate and key, and the CA certificates it
// checks the other end's certificate against. The zero value means plain
// text. Both ends use TLS 1.3 only.
//
// The files are read again when they change (checked at each new
// connection), so certificates can be renewed without a restart; a
// renewed file that does not load is logged and the last good one kept.
type TLSFiles struct {
	Cert, Key, CA string
	// ClientNames, on a server, are the names a client certificate must
	// carry one of (its common name or a DNS name): "nixcache-index" lets
	// only the index's certificate call the signer. Empty: any
	// certificate signed by CA.
	ClientNames []string
	// flags name the flags that set Cert, Key and CA, for error messages.
	flags [3]string
}

// ServerTLSFlags registers a gRPC server's TLS flags on fs: -tls-cert,
// -tls-key and -tls-client-ca. Given together they turn on mutual TLS:
// a client must present a certificate signed by a -tls-client-ca.
func ServerTLSFlags(fs *flag.FlagSet) *TLSFiles {
	f := &TLSFiles{flags: [3]string{"tls-cert", "tls-key", "tls-client-ca"}}
	fs.StringVar(&f.Cert, f.flags[0], "", "PEM certificate (chain) of this gRPC server; with -tls-key and -tls-client-ca turns on mutual TLS (empty: plain text)")
	fs.StringVar(&f.Key, f.flags[1], "", "PEM private key of -tls-cert")
	fs.StringVar(&f.CA, f.flags[2], "", "PEM CA certificate(s); gRPC clients must present a certificate signed by one")
	fs.Func("tls-client-names", "comma-separated names, one of which a client certificate must carry as its common name or a DNS name (e.g. nixcache-index: only the index may call); empty: any certificate signed by -tls-client-ca", func(v string) error {
		f.ClientNames = nil
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); n != "" {
				f.ClientNames = append(f.ClientNames, n)
			}
		}
		return nil
	})
	return f
}

// ClientTLSFlags registers a gRPC client's TLS flags on fs:
// -grpc-tls-cert, -grpc-tls-key and -grpc-tls-ca, for calls to services
// that serve mutual TLS. The upstream's certificate must name the host of
// its address (a DNS name or an IP address in subjectAltName).
func ClientTLSFlags(fs *flag.FlagSet) *TLSFiles {
	f := &TLSFiles{flags: [3]string{"grpc-tls-cert", "grpc-tls-key", "grpc-tls-ca"}}
	fs.StringVar(&f.Cert, f.flags[0], "", "PEM client certificate presented to the gRPC services called; with -grpc-tls-key and -grpc-tls-ca turns on mutual TLS (empty: plain text)")
	fs.StringVar(&f.Key, f.flags[1], "", "PEM private key of -grpc-tls-cert")
	fs.StringVar(&f.CA, f.flags[2], "", "PEM CA certificate(s) the gRPC services' certificates must be signed by")
	return f
}

// ClientTLSFlagNames are the names of the flags ClientTLSFlags registers.
var ClientTLSFlagNames = []string{"grpc-tls-cert", "grpc-tls-key", "grpc-tls-ca"}

// Enabled reports whether any file is set; Validate checks they all are.
func (f *TLSFiles) Enabled() bool {
	return f != nil && (f.Cert != "" || f.Key != "" || f.CA != "")
}

func (f *TLSFiles) flag(i int) string {
	if f.flags[i] == "" {
		return [3]string{"cert", "key", "CA"}[i]
	}
	return "-" + f.flags[i]
}

// Validate checks that the files are all set or all empty, and that the
// set ones load: the certificate with its key, the CA file with at least
// one certificate. Errors name the flag at fault.
func (f *TLSFiles) Validate() error {
	if !f.Enabled() {
		if len(f.ClientNames) > 0 {
			return errors.New("-tls-client-names needs mutual TLS (-tls-cert, -tls-key, -tls-client-ca)")
		}
		return nil
	}
	var missing []string
	for i, v := range []string{f.Cert, f.Key, f.CA} {
		if v == "" {
			missing = append(missing, f.flag(i))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s, %s and %s go together (mutual TLS): %s not set",
			f.flag(0), f.flag(1), f.flag(2), strings.Join(missing, " and "))
	}
	if _, err := f.loadKeyPair(); err != nil {
		return err
	}
	_, err := f.loadCA()
	return err
}

func (f *TLSFiles) loadKeyPair() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("%s %s, %s %s: %w", f.flag(0), f.Cert, f.flag(1), f.Key, err)
	}
	return &cert, nil
}

func (f *TLSFiles) loadCA() (*x509.CertPool, error) {
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.flag(2), err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", f.flag(2), f.CA)
	}
	return pool, nil
}

// ServerOptions returns the server options that serve mutual TLS with f
// (grpc.Creds), or none when f is not enabled.
func (f *TLSFiles) ServerOptions(log *slog.Logger) ([]grpc.ServerOption, error) {
	if !f.Enabled() {
		if f != nil {
			return nil, f.Validate() // -tls-client-names alone
		}
		return nil, nil
	}
	creds, err := f.ServerCredentials(log)
	if err != nil {
		return nil, err
	}
	return []grpc.ServerOption{grpc.Creds(creds)}, nil
}

// ServerCredentials are the transport credentials of a server that
// requires and verifies client certificates.
func (f *TLSFiles) ServerCredentials(log *slog.Logger) (credentials.TransportCredentials, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	pair, ca := f.watch(log)
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, err := pair.get()
			if err != nil {
				return nil, err
			}
			pool, err := ca.get()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				Certificates:     []tls.Certificate{*cert},
				ClientAuth:       tls.RequireAndVerifyClientCert,
				ClientCAs:        pool,
				VerifyConnection: f.checkClientName,
			}, nil
		},
	}), nil
}

// checkClientName refuses a client certificate that carries none of
// f.ClientNames (after the chain was verified against the CA).
func (f *TLSFiles) checkClientName(cs tls.ConnectionState) error {
	if len(f.ClientNames) == 0 {
		return nil
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the client sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	for _, n := range f.ClientNames {
		if leaf.Subject.CommonName == n || slices.Contains(leaf.DNSNames, n) {
			return nil
		}
	}
	return fmt.Errorf("tls: client certificate %q is not one of -tls-client-names %q", leaf.Subject.CommonName, f.ClientNames)
}

// DialOption returns the transport credentials for calls to target:
// mutual TLS with f, or plain text when f is not enabled.
func (f *TLSFiles) DialOption(target string, log *slog.Logger) (grpc.DialOption, error) {
	if !f.Enabled() {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	creds, err := f.ClientCredentials(ServerName(target), log)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(creds), nil
}

// ClientCredentials are the transport credentials of a client that
// presents its certificate and accepts only a server certificate for
// serverName signed by one of the CA certificates.
func (f *TLSFiles) ClientCredentials(serverName string, log *slog.Logger) (credentials.TransportCredentials, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	pair, ca := f.watch(log)
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return pair.get()
		},
		// The server's certificate is checked below, against the CA
		// file as it is now (tls.Config has no hook to renew RootCAs).
		InsecureSkipVerify: true, //nolint:gosec // G402: verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			pool, err := ca.get()
			if err != nil {
				return err
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the server sent no certificate")
			}
			opts := x509.VerifyOptions{
				DNSName:       serverName,
				Roots:         pool,
				Intermediates: x509.NewCertPool(),
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}), nil
}

// ServerName is the name a server's certificate must have for calls to
// target: the host of its address ("index" for "dns:///index:5011").
func ServerName(target string) string {
	if i := strings.LastIndex(target, "/"); i >= 0 {
		target = target[i+1:]
	}
	if host, _, err := net.SplitHostPort(target); err == nil {
		return host
	}
	return target
}

// watch returns the key pair and the CA pool of f, each read again when
// its files change.
func (f *TLSFiles) watch(log *slog.Logger) (*reloading[*tls.Certificate], *reloading[*x509.CertPool]) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &reloading[*tls.Certificate]{paths: []string{f.Cert, f.Key}, load: f.loadKeyPair, log: log},
		&reloading[*x509.CertPool]{paths: []string{f.CA}, load: f.loadCA, log: log}
}

// fileStamp is what a file looked like: a changed stamp means it was
// rewritten or replaced.
type fileStamp struct {
	mtime time.Time
	size  int64
}

// reloading is a value loaded from files, loaded again when their stamps
// change.
type reloading[T any] struct {
	paths []string
	load  func() (T, error)
	log   *slog.Logger

	mu     sync.Mutex
	stamps []fileStamp
	value  T
	loaded bool
}

func (r *reloading[T]) get() (T, error) {
	stamps := make([]fileStamp, len(r.paths))
	for i, p := range r.paths {
		if fi, err := os.Stat(p); err == nil {
			stamps[i] = fileStamp{mtime: fi.ModTime(), size: fi.Size()}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loaded && slices.Equal(stamps, r.stamps) {
		return r.value, nil
	}
	v, err := r.load()
	if err != nil {
		if r.loaded {
			// A file half-written by a renewal: keep the last good one
			// and try again at the next connection.
			r.log.Warn("TLS files changed but do not load; keeping the previous ones", "files", r.paths, "err", err)
			return r.value, nil
		}
		return v, err
	}
	if r.loaded {
		r.log.Info("TLS files reloaded", "files", r.paths)
	}
	r.value, r.stamps, r.loaded = v, stamps, true
	return v, nil
}
