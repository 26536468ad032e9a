package catalog

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// Backup copies the catalogue file as it is now, consistent (one read
// transaction), into a temporary file beside it, and returns that file
// open at its start with its size. The file is already unlinked: closing
// it frees the space. Writers go on meanwhile; the transaction lasts only
// as long as the local copy, not as long as the caller takes to send it.
func (c *Catalog) Backup() (*os.File, int64, error) {
	f, err := os.CreateTemp(filepath.Dir(c.db.Path()), ".catalog-backup-*")
	if err != nil {
		return nil, 0, fmt.Errorf("backup: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("backup: %w", err)
	}
	var n int64
	err = c.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(f)
		return err
	})
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("backup: %w", err)
	}
	return f, n, nil
}
