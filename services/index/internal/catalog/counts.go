package catalog

import bolt "go.etcd.io/bbolt"

// Counts are the numbers of entries of the catalogue's buckets, read
// without decoding any value: cheap enough for every metrics scrape.
type Counts struct {
	Pushed      int // published pushed paths
	Local       int // local paths, signed or not (some may also be pushed)
	Pinned      int
	Quarantined int
}

// Counts reads the bucket sizes in one read transaction.
func (c *Catalog) Counts() (Counts, error) {
	var n Counts
	err := c.db.View(func(tx *bolt.Tx) error {
		keys := func(name []byte) int {
			if b := tx.Bucket(name); b != nil {
				return b.Stats().KeyN
			}
			return 0
		}
		n.Pushed = keys(pathsBucket)
		n.Local = keys(localBucket) + keys(localUnsignedBucket)
		n.Pinned = keys(pinsBucket)
		n.Quarantined = keys(quarantineBucket)
		return nil
	})
	return n, err
}
