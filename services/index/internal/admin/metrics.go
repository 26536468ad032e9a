package admin

import (
	"time"

	"github.com/nixcache/nixcache/platform/metrics"
)

// byteStatsMaxAge bounds how stale the byte totals of the catalogue gauges
// may be: they need a scan of every path, the counts do not.
const byteStatsMaxAge = 5 * time.Minute

// CatalogStats feeds the catalogue gauges of /metrics (see
// metrics.RegisterCatalog): path counts read fresh at every scrape, byte
// totals from a full scan at most every byteStatsMaxAge.
func (s *Service) CatalogStats() (metrics.CatalogStats, error) {
	n, err := s.cat.Counts()
	if err != nil {
		return metrics.CatalogStats{}, err
	}
	s.bytesMu.Lock()
	defer s.bytesMu.Unlock()
	if s.bytesAt.IsZero() || s.now().Sub(s.bytesAt) > byteStatsMaxAge {
		st, err := s.stats()
		if err != nil {
			return metrics.CatalogStats{}, err
		}
		s.narBytes, s.storedBytes, s.bytesAt = st.NarBytes, st.StoredBytes, s.now()
	}
	return metrics.CatalogStats{
		PushedPaths:      uint64(n.Pushed),
		LocalPaths:       uint64(n.Local),
		PinnedPaths:      uint64(n.Pinned),
		QuarantinedPaths: uint64(n.Quarantined),
		NarBytes:         s.narBytes,
		StoredBytes:      s.storedBytes,
	}, nil
}
