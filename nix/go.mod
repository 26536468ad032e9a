module github.com/nixcache/nixcache/nix

go 1.25.0

require (
	github.com/klauspost/compress v1.20.4
	github.com/ulikunitz/xz v0.5.17
)
