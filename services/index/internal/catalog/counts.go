package catalog

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Counts are the catalogue's running totals (derived.go), kept with every
// write: reading them costs one transaction, whatever the catalogue's size.
type Counts struct {
	Pushed      int // published pushed paths
	Local       int // local paths, signed or not (some may also be pushed)
	Pinned      int
	Quarantined int

	// LocalOnly counts the local paths not also pushed (published or
	// quarantined), LocalOnlyNarBytes sums their NarSize.
	LocalOnly         int
	LocalOnlyNarBytes uint64
	// PushedNarBytes sums the NarSize of the pushed paths, quarantined
	// ones included.
	PushedNarBytes uint64
	// Files and FileBytes are the NAR file records (quarantined ones
	// included) and the sum of their sizes: the files on disk.
	Files     int
	FileBytes uint64
}

// Counts reads the running totals in one read transaction.
func (c *Catalog) Counts() (Counts, error) {
	var n Counts
	err := c.db.View(func(tx *bolt.Tx) error {
		get := func(name string) uint64 { return counter(tx, name) }
		n.Pushed = int(get(cPushed))
		n.Local = int(get(cLocal) + get(cLocalUnsigned))
		n.Pinned = int(get(cPins))
		n.Quarantined = int(get(cQuarantined))
		n.LocalOnly = int(get(cLocal) - min(get(cShadowed), get(cLocal)))
		n.LocalOnlyNarBytes = get(cLocalBytes) - min(get(cShadowedBytes), get(cLocalBytes))
		n.PushedNarBytes = get(cPushedBytes) + get(cQuarantinedBytes)
		n.Files = int(get(cFiles))
		n.FileBytes = get(cFileBytes)
		return nil
	})
	if err != nil {
		return Counts{}, fmt.Errorf("read catalogue totals: %w", err)
	}
	return n, nil
}
