package admin

import (
	"github.com/nixcache/nixcache/platform/metrics"
)

// CatalogStats feeds the catalogue gauges of /metrics (see
// metrics.RegisterCatalog), read fresh at every scrape from the
// catalogue's running totals: no scan, whatever its size.
func (s *Service) CatalogStats() (metrics.CatalogStats, error) {
	n, err := s.cat.Counts()
	if err != nil {
		return metrics.CatalogStats{}, err
	}
	return metrics.CatalogStats{
		PushedPaths:      uint64(n.Pushed),
		LocalPaths:       uint64(n.Local),
		PinnedPaths:      uint64(n.Pinned),
		QuarantinedPaths: uint64(n.Quarantined),
		NarBytes:         n.PushedNarBytes + n.LocalOnlyNarBytes,
		StoredBytes:      n.FileBytes,
	}, nil
}
