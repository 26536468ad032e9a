package app

import (
	"errors"
	"fmt"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
	"github.com/nixcache/nixcache/services/index/internal/upstream"
)

// upstreamConfig is the upstream part of the options, checked.
func (o Options) upstreamConfig() (upstream.Config, error) {
	cfg := upstream.Config{
		URLs:         o.Upstreams,
		StoreDir:     o.StoreDir,
		Timeout:      o.UpstreamTimeout,
		NegativeTTL:  o.UpstreamNegativeTTL,
		FetchTimeout: o.UpstreamFetchTimeout,
		Log:          o.Log,
	}
	if len(o.Upstreams) == 0 {
		return cfg, errors.New("-upstream-key without -upstream")
	}
	for _, k := range o.UpstreamKeys {
		pk, err := signature.ParsePublicKey(k)
		if err != nil {
			return cfg, fmt.Errorf("-upstream-key: %w", err)
		}
		cfg.Keys = append(cfg.Keys, pk)
	}
	if cfg.Log != nil {
		cfg.Log = cfg.Log.With("component", "upstream")
	}
	return cfg, cfg.Validate()
}

// openUpstream makes the puller that fetches misses from the upstreams.
func openUpstream(o Options, p *ops, cat *catalog.Catalog, nars *narstore.Store, pub *publish.Publisher) (*upstream.Puller, error) {
	cfg, err := o.upstreamConfig()
	if err != nil {
		return nil, err
	}
	cfg.Registerer = p.registry
	puller, err := upstream.New(cfg, cat, nars, pub)
	if err != nil {
		return nil, err
	}
	keys := make([]string, len(cfg.Keys))
	for i, k := range cfg.Keys {
		keys[i] = k.String()
	}
	o.Log.Info("pulling through upstream caches", "upstreams", o.Upstreams, "keys", keys,
		"timeout", o.UpstreamTimeout, "negative_ttl", o.UpstreamNegativeTTL, "fetch_timeout", o.UpstreamFetchTimeout)
	return puller, nil
}
