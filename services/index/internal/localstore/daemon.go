package localstore

import (
	"context"
	"time"

	"github.com/nixcache/nixcache/nix/daemon"
)

// daemonCallTimeout bounds each call to the daemon, so that a daemon that
// hangs cannot stall the sync for good.
const daemonCallTimeout = 2 * time.Minute

// PoolDaemon is the Daemon of a pool of daemon connections.
type PoolDaemon struct {
	Pool *daemon.Pool
}

func (d PoolDaemon) do(ctx context.Context, fn func(context.Context, *daemon.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, daemonCallTimeout)
	defer cancel()
	return d.Pool.Do(ctx, func(c *daemon.Conn) error { return fn(ctx, c) })
}

// QueryAllValidPaths implements Daemon.
func (d PoolDaemon) QueryAllValidPaths(ctx context.Context) (paths []string, err error) {
	err = d.do(ctx, func(ctx context.Context, c *daemon.Conn) error {
		paths, err = c.QueryAllValidPaths(ctx)
		return err
	})
	return paths, err
}

// QueryValidPaths implements Daemon.
func (d PoolDaemon) QueryValidPaths(ctx context.Context, paths []string) (valid []string, err error) {
	err = d.do(ctx, func(ctx context.Context, c *daemon.Conn) error {
		valid, err = c.QueryValidPaths(ctx, paths)
		return err
	})
	return valid, err
}

// QueryPathFromHashPart implements Daemon.
func (d PoolDaemon) QueryPathFromHashPart(ctx context.Context, hashPart string) (p string, err error) {
	err = d.do(ctx, func(ctx context.Context, c *daemon.Conn) error {
		p, err = c.QueryPathFromHashPart(ctx, hashPart)
		return err
	})
	return p, err
}

// QueryPathInfo implements Daemon.
func (d PoolDaemon) QueryPathInfo(ctx context.Context, storePath string) (info *daemon.PathInfo, err error) {
	err = d.do(ctx, func(ctx context.Context, c *daemon.Conn) error {
		info, err = c.QueryPathInfo(ctx, storePath)
		return err
	})
	return info, err
}
