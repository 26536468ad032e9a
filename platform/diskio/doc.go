// Package diskio holds what the services share about writing files to
// disk.
package diskio

// WritebackSize is how many bytes of a file being written may wait in
// the page cache before their writeback is started (StartWriteback): the
// final fsync then finds little left to write, instead of the whole file.
const WritebackSize = 8 << 20
