package narstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// removeTimeout bounds the removal of one file from the backend.
const removeTimeout = time.Minute

// Remove deletes the file nf describes; a file already gone is not an
// error. The caller has removed its catalogue record first.
func (s *Store) Remove(nf *indexv1.NarFile) error {
	k, err := keyOfFile(nf)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	if err := s.files.Remove(ctx, k); err != nil {
		return fmt.Errorf("remove NAR file %s from %s: %w", nf.GetFileHash(), s.files, err)
	}
	return nil
}

// Path is where the file nf describes lives on the local disk; an error
// when the files are not on the local disk.
func (s *Store) Path(nf *indexv1.NarFile) (string, error) {
	d, ok := s.files.(*Dir)
	if !ok {
		return "", errors.New("NAR files are not on the local disk but in " + s.files.String())
	}
	k, err := keyOfFile(nf)
	if err != nil {
		return "", err
	}
	return d.path(k), nil
}
