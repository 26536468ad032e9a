package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/healthcheck"
	"github.com/nixcache/nixcache/platform/program"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/admin"
)

// runBackup is `nixcache-index backup`: a copy of a running index's
// catalogue, through AdminService.Backup.
func runBackup(args []string, stdout, stderr io.Writer) error {
	fs := program.FlagSet(name+" backup", stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: nixcache-index backup [flags] > catalog.db\n\n"+
			"Copies the catalogue (catalog.db) of a running index, consistent as of the call, while it\n"+
			"goes on serving, to standard output or -out. The NAR files are not in it: copy them after\n"+
			"(nars/ in the data directory). The token is -admin-token, else the first token with the\n"+
			"admin scope in -auth-file (in the index's container both are set already).")
		fs.PrintDefaults()
	}
	addr := fs.String("addr", healthcheck.SelfAddr("127.0.0.1:5011"), "the index's gRPC address; the default is $NIXCACHE_LISTEN when set (a wildcard host made loopback)")
	token := fs.String("admin-token", "", "token with the admin scope")
	authFile := fs.String("auth-file", "", "token file to take the first admin token from when -admin-token is empty")
	out := fs.String("out", "-", `file to write the copy to ("-": standard output); written beside it first, then renamed`)
	timeout := fs.Duration("timeout", 30*time.Minute, "bound on the whole copy")
	tlsFiles := grpcutil.ClientTLSFlags(fs)
	if err := program.Parse(fs, args); err != nil {
		return err
	}
	if err := tlsFiles.Validate(); err != nil {
		return program.UsageError(err)
	}
	if *token == "" && *authFile != "" {
		t, err := adminToken(*authFile)
		if err != nil {
			return err
		}
		*token = t
	}
	if *token == "" {
		return program.Usagef("no token: give -admin-token or -auth-file")
	}
	creds, err := tlsFiles.DialOption(*addr, nil)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient("passthrough:///"+*addr, creds, grpc.WithPerRPCCredentials(bearer{*token, tlsFiles.Enabled()}))
	if err != nil {
		return fmt.Errorf("index %s: %w", *addr, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	client := indexv1.NewAdminServiceClient(cc)
	if *out == "-" {
		_, err := admin.WriteBackup(ctx, client, stdout)
		return err
	}
	return writeFileAtomic(*out, func(w io.Writer) error {
		_, err := admin.WriteBackup(ctx, client, w)
		return err
	})
}

// writeFileAtomic writes path through write into a new file beside it,
// synced, then renamed over path: path is whole or untouched.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// adminToken is the token of the first line of the token file whose
// scopes include admin.
func adminToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("auth file: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if s, err := auth.ParseScopes(f[1]); err == nil && s.Has(auth.Admin) {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("auth file %s: no token with the admin scope", path)
}

// bearer sends the token as "authorization: Bearer <token>".
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

var _ credentials.PerRPCCredentials = bearer{}
