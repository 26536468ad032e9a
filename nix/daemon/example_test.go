package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"

	"github.com/nixcache/nixcache/nix/daemon"
)

// Serving a .narinfo and its NAR from the host's store, as nix-serve does.
func Example() {
	ctx := context.Background()
	pool, err := daemon.NewPool(daemon.DefaultSocket, 8)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	var info *daemon.PathInfo
	err = pool.Do(ctx, func(c *daemon.Conn) error {
		p, err := c.QueryPathFromHashPart(ctx, "7rjj86a15146cq1d3qy068lml7n8ykzm")
		if err != nil {
			return err
		}
		info, err = c.QueryPathInfo(ctx, p)
		return err
	})
	switch {
	case errors.Is(err, daemon.ErrNotFound):
		fmt.Println("404")
		return
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(info.StorePath, info.NarHash, info.NarSize, info.References)

	err = pool.Do(ctx, func(c *daemon.Conn) error {
		return c.NarFromPath(ctx, info.StorePath, io.Discard) // the HTTP response
	})
	if err != nil {
		log.Fatal(err)
	}
}
