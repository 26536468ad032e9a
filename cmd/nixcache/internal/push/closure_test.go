package push

import (
	"slices"
	"testing"

	"github.com/nixcache/nixcache/nix/daemon"
)

func TestTopoOrder(t *testing.T) {
	info := func(p string, refs ...string) *daemon.PathInfo {
		return &daemon.PathInfo{StorePath: p, References: refs}
	}
	infos := map[string]*daemon.PathInfo{
		"/s/a-top":  info("/s/a-top", "/s/b-mid", "/s/z-leaf", "/s/a-top"),
		"/s/b-mid":  info("/s/b-mid", "/s/z-leaf", "/s/outside"),
		"/s/z-leaf": info("/s/z-leaf", "/s/z-leaf"),
		"/s/c-solo": info("/s/c-solo"),
	}
	got := topoOrder(infos)
	want := []string{"/s/z-leaf", "/s/b-mid", "/s/a-top", "/s/c-solo"}
	if !slices.Equal(got, want) {
		t.Errorf("topoOrder = %q, want %q", got, want)
	}
}

func TestInOrder(t *testing.T) {
	order := []string{"/s/leaf", "/s/mid", "/s/top"}
	// Reordered and repeated by the cache: taken in the closure's order, once.
	got := inOrder(order, []string{"/s/top", "/s/leaf", "/s/top"})
	if want := []string{"/s/leaf", "/s/top"}; !slices.Equal(got, want) {
		t.Errorf("inOrder = %q, want %q", got, want)
	}
}
