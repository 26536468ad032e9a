// Package nix is the root of the Nix formats shared by the nixcache services:
//
//   - nixbase32: Nix's base-32 alphabet and encoding.
//   - nixhash: hashes in every encoding Nix accepts (nix32, hex, base64, SRI).
//   - storepath: store paths, hash parts and names.
//   - narinfo: the .narinfo format, parsed as tolerantly as Nix does.
//   - signature: ed25519 key files, fingerprints and narinfo signatures.
//   - nar: streaming NAR reader, writer, and dump of a directory tree.
//   - nardump: the NAR of a store path as a Reader from any offset, and sent
//     with sendfile (serving the host's store).
//   - compression: the compressions a binary cache speaks (none, xz, zstd, bzip2).
//   - daemon: a client of the Nix daemon's worker protocol (Nix 2.3 and later).
package nix
