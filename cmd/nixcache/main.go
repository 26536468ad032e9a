// Command nixcache pushes to a nixcache from builders and CI, through the
// cache's public HTTP interface:
//
//	nixcache push [flags] PATH...   push closures (or --stdin: paths on stdin)
//	nixcache hook                   post-build-hook: queue $OUT_PATHS in the spool
//	nixcache daemon                 push what the hook queued, forever
//	nixcache status                 what is queued, and the last error
//	nixcache watch-store            push every new valid path of the store
//	nixcache use URL                the nix.conf lines and netrc entry of a cache
//
// Every flag has an environment twin (-cache is NIXCACHE_CACHE); the token
// comes from -token (NIXCACHE_TOKEN) or the netrc entry of the cache's
// host.
package main

import (
	"os"

	"github.com/nixcache/nixcache/cmd/nixcache/internal/cli"
	"github.com/nixcache/nixcache/platform/program"
)

func main() {
	ctx, stop := program.SignalContext()
	err := cli.Run(ctx, os.Args[1:], cli.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(program.Exit("nixcache", err, os.Stderr))
}
