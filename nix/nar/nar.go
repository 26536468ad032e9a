// Package nar reads and writes Nix ARchives (NAR) as streams, and dumps a
// directory tree into one, byte for byte as nix-store --dump does.
package nar

import (
	"fmt"
	"strings"
)

// NodeType is the type of a NAR node.
type NodeType uint8

const (
	TypeRegular NodeType = iota + 1
	TypeDirectory
	TypeSymlink
)

// String returns the name the NAR format uses for the type ("regular").
func (t NodeType) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("NodeType(%d)", uint8(t))
}

// Header describes one node of a NAR, in the order the archive holds them.
type Header struct {
	// Path of the node inside the archive: "/" for the root, then
	// "/dir/file" (slash-separated, no trailing slash).
	Path       string
	Type       NodeType
	Executable bool   // regular files only
	Size       uint64 // regular files only: contents length
	LinkTarget string // symlinks only
}

// Limits of the Reader (and the Writer, so that it never writes what the
// Reader refuses). Nix itself bounds nothing; these are the limits of Linux,
// where a NAR is unpacked.
const (
	// maxNameLen is the longest entry name: NAME_MAX.
	maxNameLen = 255
	// maxTargetLen is the longest symlink target: PATH_MAX less its NUL.
	maxTargetLen = 4095
	// maxPathLen is the longest Header.Path: PATH_MAX less its NUL. It
	// also bounds how deep directories nest.
	maxPathLen = 4095
)

// The tokens of the format.
const (
	magic        = "nix-archive-1"
	tokOpen      = "("
	tokClose     = ")"
	tokType      = "type"
	tokRegular   = "regular"
	tokDirectory = "directory"
	tokSymlink   = "symlink"
	tokExec      = "executable"
	tokContents  = "contents"
	tokTarget    = "target"
	tokEntry     = "entry"
	tokName      = "name"
	tokNode      = "node"

	// maxTokenLen bounds the length of a token; the longest is magic.
	maxTokenLen = len(magic)
)

// checkName reports what is wrong with an entry name, as Nix checks it.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty entry name")
	case name == "." || name == "..":
		return fmt.Errorf("entry name %q is not allowed", name)
	case len(name) > maxNameLen:
		return fmt.Errorf("entry name of %d bytes, longer than %d", len(name), maxNameLen)
	case strings.IndexByte(name, '/') >= 0:
		return fmt.Errorf("entry name %q contains '/'", name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("entry name %q contains NUL", name)
	}
	return nil
}

// checkTarget reports what is wrong with a symlink target.
func checkTarget(target string) error {
	switch {
	case target == "":
		return fmt.Errorf("empty symlink target")
	case len(target) > maxTargetLen:
		return fmt.Errorf("symlink target of %d bytes, longer than %d", len(target), maxTargetLen)
	case strings.IndexByte(target, 0) >= 0:
		return fmt.Errorf("symlink target %q contains NUL", target)
	}
	return nil
}

// childPath joins a directory's Path and an entry name.
func childPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// padLen is the number of zero bytes that follow n bytes of a string.
func padLen(n uint64) int { return int(-n & 7) }
