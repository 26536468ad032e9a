// Package e2e drives the real nixcache binaries with the real Nix client:
// pushes with `nix copy --to`, substitutes into fresh chroot stores, and
// checks what a client trusts. Run with `make test-e2e`, which builds the
// binaries and points NIXCACHE_BIN at them; without NIXCACHE_BIN the tests
// build them into a temporary directory.
package e2e
