package narstore

import (
	"errors"
	"fmt"
	"os"

	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// Remove deletes the file nf describes; a file already gone is not an
// error. The caller has removed its catalogue record first.
func (s *Store) Remove(nf *indexv1.NarFile) error {
	name, err := s.Path(nf)
	if err != nil {
		return err
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove NAR file: %w", err)
	}
	return nil
}

// Path is where the file nf describes lives.
func (s *Store) Path(nf *indexv1.NarFile) (string, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return "", fmt.Errorf("NAR file: %w", err)
	}
	return s.filePath(h.NixBase32(), nf.GetCompression())
}
