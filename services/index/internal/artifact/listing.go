package artifact

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nixcache/nixcache/nix/nar"
)

// MakeListing reads an uncompressed NAR from r and returns its listing
// (JSON, version 1, as Nix's listNar writes it, without narOffset).
func MakeListing(r io.Reader) ([]byte, error) {
	nr := nar.NewReader(r)
	var root *Node
	dirs := map[string]*Node{}
	for {
		h, err := nr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list NAR: %w", err)
		}
		n := &Node{}
		switch h.Type {
		case nar.TypeRegular:
			size := h.Size
			n.Type, n.Size, n.Executable = "regular", &size, h.Executable
		case nar.TypeSymlink:
			target := h.LinkTarget
			n.Type, n.Target = "symlink", &target
		case nar.TypeDirectory:
			n.Type, n.Entries = "directory", map[string]*Node{}
			dirs[h.Path] = n
		}
		if h.Path == "/" {
			root = n
			continue
		}
		i := strings.LastIndexByte(h.Path, '/')
		parent := h.Path[:i]
		if parent == "" {
			parent = "/"
		}
		d, ok := dirs[parent]
		if !ok {
			return nil, fmt.Errorf("list NAR: %s comes outside a directory", h.Path)
		}
		d.Entries[h.Path[i+1:]] = n
	}
	if root == nil {
		return nil, errors.New("list NAR: empty archive")
	}
	return json.Marshal(Listing{Version: 1, Root: root})
}
