module github.com/nixcache/nixcache/cmd/nixcache

go 1.26.0

replace (
	github.com/nixcache/nixcache/nix => ../../nix
	github.com/nixcache/nixcache/platform => ../../platform
)

require (
	github.com/klauspost/compress v1.20.4
	github.com/nixcache/nixcache/nix v0.0.0-00010101000000-000000000000
	github.com/nixcache/nixcache/platform v0.0.0-00010101000000-000000000000
	go.etcd.io/bbolt v1.4.3
	golang.org/x/term v0.47.0
)

require (
	github.com/ulikunitz/xz v0.5.17 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
