package push

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nixcache/nixcache/nix/daemon"
)

// closure returns the path infos of the closure of roots (absolute store
// paths) and its paths ordered references first.
func closure(ctx context.Context, pool *daemon.Pool, roots []string) (map[string]*daemon.PathInfo, []string, error) {
	infos := map[string]*daemon.PathInfo{}
	err := pool.Do(ctx, func(c *daemon.Conn) error {
		queue := slices.Clone(roots)
		for len(queue) > 0 {
			p := queue[len(queue)-1]
			queue = queue[:len(queue)-1]
			if _, seen := infos[p]; seen {
				continue
			}
			info, err := c.QueryPathInfo(ctx, p)
			if errors.Is(err, daemon.ErrNotFound) {
				return fmt.Errorf("%s is not a valid path of the local store", p)
			}
			if err != nil {
				return err
			}
			infos[p] = info
			for _, r := range info.References {
				if _, seen := infos[r]; !seen {
					queue = append(queue, r)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("closure: %w", err)
	}
	return infos, topoOrder(infos), nil
}

// topoOrder orders the paths of infos so that every path comes after the
// paths it refers to (a self-reference aside); ties go by name, so the
// order is the same each time.
func topoOrder(infos map[string]*daemon.PathInfo) []string {
	names := make([]string, 0, len(infos))
	for p := range infos {
		names = append(names, p)
	}
	slices.Sort(names)
	order := make([]string, 0, len(infos))
	state := make(map[string]uint8, len(infos)) // 1 visiting, 2 done
	var visit func(p string)
	visit = func(p string) {
		if state[p] != 0 {
			return // done, or a cycle (Nix forbids them)
		}
		state[p] = 1
		for _, r := range infos[p].References {
			if _, ok := infos[r]; ok && r != p {
				visit(r)
			}
		}
		state[p] = 2
		order = append(order, p)
	}
	for _, p := range names {
		visit(p)
	}
	return order
}

// ValidPaths returns those of paths that are valid in the local store.
func (p *Pusher) ValidPaths(ctx context.Context, paths []string) ([]string, error) {
	var valid []string
	err := p.o.Daemon.Do(ctx, func(c *daemon.Conn) error {
		var err error
		valid, err = c.QueryValidPaths(ctx, paths)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("query valid paths: %w", err)
	}
	return valid, nil
}

// AllValidPaths returns every valid path of the local store.
func (p *Pusher) AllValidPaths(ctx context.Context) ([]string, error) {
	var all []string
	err := p.o.Daemon.Do(ctx, func(c *daemon.Conn) error {
		var err error
		all, err = c.QueryAllValidPaths(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list valid paths: %w", err)
	}
	return all, nil
}
