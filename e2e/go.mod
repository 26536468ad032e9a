module github.com/nixcache/nixcache/e2e

go 1.25.0

replace (
	github.com/nixcache/nixcache/nix => ../nix
	github.com/nixcache/nixcache/proto => ../proto
)
