package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

const (
	// lookupConcurrency bounds the narinfo lookups of one fetch in flight.
	lookupConcurrency = 8
	// narConcurrency bounds the NAR downloads of one fetch in flight.
	narConcurrency = 4
)

// found is a narinfo an upstream served whose signature verified.
type found struct {
	up   *upstreamCache
	ni   *narinfo.NarInfo
	path storepath.Path
	// sigs are its signatures by trusted keys, kept beside ours.
	sigs []string
}

// node is one path of the closure being fetched.
type node struct {
	*found
	// refs are the hash parts of its references the index lacks.
	refs []string
	file *indexv1.NarFile
}

// fetch fetches the path with this hash part and every path of its
// closure the index lacks: the narinfos first, then the NARs, then it
// publishes them, references first. It returns the published path and
// how many paths it published.
func (p *Puller) fetch(ctx context.Context, hashPart string) (*indexv1.PathInfo, int, error) {
	root, err := p.lookup(ctx, hashPart, "")
	if err != nil {
		return nil, 0, err
	}
	nodes, err := p.closure(ctx, root)
	if err != nil {
		return nil, 0, err
	}
	order, err := topoOrder(nodes, hashPart)
	if err != nil {
		return nil, 0, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(narConcurrency)
	for _, h := range order {
		n := nodes[h]
		g.Go(func() error {
			nf, err := p.narFile(gctx, n)
			n.file = nf
			return err
		})
	}
	if err := g.Wait(); err != nil {
		// What was verified is published all the same, so that its NAR
		// file is not left unused: each path whose NAR file was stored
		// and whose references are published.
		p.publishVerified(ctx, nodes, order)
		return nil, 0, err
	}
	for _, h := range order {
		if err := p.publish(ctx, nodes[h]); err != nil {
			return nil, 0, err
		}
	}
	info, err := p.catalog.PathInfo(hashPart)
	return info, len(order), err
}

// publishVerified publishes, references first, the nodes whose NAR file
// is stored and whose references are published, after a fetch failed.
func (p *Puller) publishVerified(ctx context.Context, nodes map[string]*node, order []string) {
	published := map[string]bool{}
	for _, h := range order {
		n := nodes[h]
		ok := n.file != nil
		for _, r := range n.refs {
			ok = ok && published[r]
		}
		if !ok {
			continue
		}
		if err := p.publish(ctx, n); err != nil {
			p.log.Warn("publish a verified path of a failed upstream fetch", "store_path", n.ni.StorePath, "err", err)
			continue
		}
		published[h] = true
	}
}

// lookup asks each upstream in order for the narinfo of hashPart and
// returns the first whose signature verifies. want, unless empty, is the
// absolute store path it must describe. Its errors are *missError, or the
// context's.
func (p *Puller) lookup(ctx context.Context, hashPart, want string) (*found, error) {
	var refused, failed []string
	for _, u := range p.upstreams {
		if u.down(p.now()) {
			failed = append(failed, u.name+" skipped: unreachable a moment ago")
			continue
		}
		ni, err := p.http.narinfo(ctx, u, hashPart, p.cfg.StoreDir)
		var ref *refusal
		var fail *failure
		switch {
		case err == nil:
		case errors.Is(err, errAbsent):
			continue
		case errors.As(err, &ref):
			refused = append(refused, fmt.Sprintf("%s: %v", u.name, ref.err))
			continue
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.As(err, &fail):
			failed = append(failed, fmt.Sprintf("%s: %v", u.name, fail.err))
			if fail.unreachable && p.cfg.NegativeTTL > 0 {
				until := p.now().Add(p.cfg.NegativeTTL)
				if u.markDown(p.now(), until) {
					p.log.Warn("upstream unreachable: skipped for -upstream-negative-ttl", "upstream", u.name,
						"until", until, "err", fail.err)
				}
			}
			continue
		default:
			return nil, err
		}
		f, err := p.accept(u, hashPart, want, ni)
		if err != nil {
			refused = append(refused, fmt.Sprintf("%s: %v", u.name, err))
			continue
		}
		return f, nil
	}
	switch {
	case len(failed) > 0:
		return nil, &missError{result: resultUnreachable, err: fmt.Errorf("no upstream has it, and not every one could be asked: %s",
			strings.Join(append(failed, refused...), "; "))}
	case len(refused) > 0:
		return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("an upstream copy was refused: %s",
			strings.Join(refused, "; "))}
	default:
		return nil, &missError{result: resultMiss, remember: true, err: errors.New("no upstream has it")}
	}
}

// accept checks an upstream narinfo: it describes the path asked for and
// carries a signature by a trusted key.
func (p *Puller) accept(u *upstreamCache, hashPart, want string, ni *narinfo.NarInfo) (*found, error) {
	sp, err := storepath.Parse(p.cfg.StoreDir, ni.StorePath)
	if err != nil {
		return nil, fmt.Errorf("narinfo: %v", err)
	}
	if sp.HashPart != hashPart || (want != "" && ni.StorePath != want) {
		return nil, fmt.Errorf("asked for %s, the narinfo describes %s", cmpOr(want, hashPart), ni.StorePath)
	}
	fp, err := ni.Fingerprint(p.cfg.StoreDir)
	if err != nil {
		return nil, err
	}
	var sigs, names []string
	for _, sig := range ni.Sigs {
		name, _, _ := signature.SplitSignature(sig)
		names = append(names, name)
		for _, k := range p.cfg.Keys {
			if k.Verify(fp, sig) {
				sigs = append(sigs, sig)
				break
			}
		}
	}
	if len(sigs) == 0 {
		if len(names) == 0 {
			return nil, fmt.Errorf("%s is not signed", ni.StorePath)
		}
		return nil, fmt.Errorf("%s has no valid signature by a trusted key (-upstream-key); signed by %s", ni.StorePath, strings.Join(names, ", "))
	}
	return &found{up: u, ni: ni, path: sp, sigs: sigs}, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// closure looks up, level by level, every reference of root's closure
// that the index lacks, and returns them all by hash part.
func (p *Puller) closure(ctx context.Context, root *found) (map[string]*node, error) {
	nodes := map[string]*node{root.path.HashPart: {found: root}}
	present := map[string]bool{}
	frontier := []string{root.path.HashPart}
	for len(frontier) > 0 {
		wanted := map[string]string{} // hash part -> absolute path
		var next []string
		for _, h := range frontier {
			n := nodes[h]
			for _, ref := range n.ni.References {
				rp, err := storepath.ParseBase(ref)
				if err != nil {
					return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s: reference: %v", n.ni.StorePath, err)}
				}
				if rp.HashPart == h {
					if ref != n.path.Base() {
						return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s refers to %s, of its own hash part", n.ni.StorePath, ref)}
					}
					continue // a self-reference
				}
				abs := rp.Absolute(p.cfg.StoreDir)
				if other, ok := nodes[rp.HashPart]; ok {
					if other.ni.StorePath != abs {
						return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s refers to %s, but %s has that hash part", n.ni.StorePath, abs, other.ni.StorePath)}
					}
					n.refs = append(n.refs, rp.HashPart)
					continue
				}
				if w, ok := wanted[rp.HashPart]; ok {
					if w != abs {
						return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("references %s and %s share a hash part", w, abs)}
					}
					n.refs = append(n.refs, rp.HashPart)
					continue
				}
				if present[abs] {
					continue
				}
				have, err := p.have(rp)
				if err != nil {
					return nil, err
				}
				if have {
					present[abs] = true
					continue
				}
				wanted[rp.HashPart] = abs
				next = append(next, rp.HashPart)
				n.refs = append(n.refs, rp.HashPart)
			}
		}
		results := make([]*found, len(next))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(lookupConcurrency)
		for i, h := range next {
			g.Go(func() error {
				f, err := p.lookup(gctx, h, wanted[h])
				var miss *missError
				if errors.As(err, &miss) {
					miss.err = fmt.Errorf("reference %s: %w", wanted[h], miss.err)
				}
				results[i] = f
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		for i, h := range next {
			nodes[h] = &node{found: results[i]}
		}
		frontier = next
	}
	return nodes, nil
}

// have reports whether the index holds the path, pushed or local.
func (p *Puller) have(sp storepath.Path) (bool, error) {
	abs := sp.Absolute(p.cfg.StoreDir)
	info, err := p.catalog.PathInfo(sp.HashPart)
	if errors.Is(err, fault.ErrNotFound) {
		info, _, err = p.catalog.LocalPathInfo(sp.HashPart)
	}
	if errors.Is(err, fault.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return info.GetStorePath() == abs, nil
}

// topoOrder returns the hash parts of nodes, every one after its
// references, refusing a reference cycle (only self-references are
// allowed, and were left out).
func topoOrder(nodes map[string]*node, root string) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	order := make([]string, 0, len(nodes))
	var visit func(h string) error
	visit = func(h string) error {
		switch state[h] {
		case done:
			return nil
		case visiting:
			return &missError{result: resultRefused, remember: true, err: fmt.Errorf("reference cycle through %s", nodes[h].ni.StorePath)}
		}
		state[h] = visiting
		for _, r := range nodes[h].refs {
			if err := visit(r); err != nil {
				return err
			}
		}
		state[h] = done
		order = append(order, h)
		return nil
	}
	if err := visit(root); err != nil {
		return nil, err
	}
	return order, nil
}

// narFile returns the stored NAR file of n, downloading it unless the
// index already has the file its narinfo names.
func (p *Puller) narFile(ctx context.Context, n *node) (*indexv1.NarFile, error) {
	ni := n.ni
	if ni.FileHash.Algo == nixhash.SHA256 {
		nf, err := p.catalog.NarFile(ni.FileHash.NixBase32())
		if err == nil && nf.GetNarHash() == ni.NarHash.String() && nf.GetNarSize() == ni.NarSize {
			return nf, nil
		}
	}
	narURL, err := resolveNar(n.up.base, ni.URL)
	if err != nil {
		return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s: %v", ni.StorePath, err)}
	}
	v, err, _ := p.narFiles.Do(narURL, func() (any, error) { return p.download(ctx, n, narURL) })
	if err != nil {
		return nil, err
	}
	return v.(*indexv1.NarFile), nil
}

// download fetches, verifies and records the NAR file of n from narURL.
func (p *Puller) download(ctx context.Context, n *node, narURL string) (*indexv1.NarFile, error) {
	ni := n.ni
	body, err := p.http.nar(ctx, n.up, narURL)
	var fail *failure
	switch {
	case err == nil:
	case errors.Is(err, errAbsent):
		return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s: its NAR %s is missing upstream", ni.StorePath, narURL)}
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.As(err, &fail):
		return nil, &missError{result: resultUnreachable, err: fmt.Errorf("%s: download %s: %v", ni.StorePath, narURL, fail.err)}
	default:
		return nil, err
	}
	defer body.Close()
	want := narstore.Expect{Compression: ni.EffectiveCompression()}
	if ni.FileHash.Algo == nixhash.SHA256 {
		want.FileHash = ni.FileHash
	}
	nf, err := p.nars.Ingest(ctx, body, want)
	switch {
	case err == nil:
	case body.err != nil && ctx.Err() == nil:
		return nil, &missError{result: resultUnreachable, err: fmt.Errorf("%s: download %s: %v", ni.StorePath, narURL, body.err)}
	case errors.Is(err, fault.ErrInvalid):
		return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s: NAR %s: %v", ni.StorePath, narURL, err)}
	default:
		return nil, fmt.Errorf("%s: store NAR: %w", ni.StorePath, err)
	}
	p.metrics.narBytes(n.up.name, nf.GetFileSize())
	if ni.FileSize != 0 && nf.GetFileSize() != ni.FileSize {
		p.dropUnrecorded(nf)
		return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf(
			"%s: NAR %s is %d bytes, the narinfo says %d", ni.StorePath, narURL, nf.GetFileSize(), ni.FileSize)}
	}
	if nf.GetNarHash() != ni.NarHash.String() || nf.GetNarSize() != ni.NarSize {
		p.dropUnrecorded(nf)
		return nil, &missError{result: resultRefused, remember: true, err: fmt.Errorf(
			"%s: NAR %s hashes to %s (%d bytes), the signed narinfo says %s (%d bytes)",
			ni.StorePath, narURL, nf.GetNarHash(), nf.GetNarSize(), ni.NarHash, ni.NarSize)}
	}
	fh, err := nixhash.Parse(nf.GetFileHash())
	if err != nil {
		return nil, fmt.Errorf("%s: stored file hash: %w", ni.StorePath, err)
	}
	return p.catalog.AddStoredNarFile(fh.NixBase32(), nf, func() error {
		_, err := p.nars.Stat(ctx, nf)
		return err
	})
}

// dropUnrecorded removes a NAR file just stored that turned out not to be
// the one wanted, unless the catalogue records it (another path has the
// same file).
func (p *Puller) dropUnrecorded(nf *indexv1.NarFile) {
	fh, err := nixhash.Parse(nf.GetFileHash())
	if err != nil {
		return
	}
	if _, err := p.catalog.NarFile(fh.NixBase32()); !errors.Is(err, fault.ErrNotFound) {
		return
	}
	if err := p.nars.Remove(nf); err != nil {
		p.log.Warn("remove refused upstream NAR file", "file_hash", nf.GetFileHash(), "err", err)
	}
}

// publish publishes n, whose NAR file is stored and whose references are
// published, with its trusted upstream signatures.
func (p *Puller) publish(ctx context.Context, n *node) error {
	ni := n.ni
	_, err := p.publisher.Publish(ctx, &indexv1.PathInfo{
		StorePath:  ni.StorePath,
		NarHash:    ni.NarHash.String(),
		NarSize:    ni.NarSize,
		References: ni.References,
		Deriver:    ni.Deriver,
		Signatures: n.sigs,
		Ca:         ni.CA,
		File: &indexv1.NarFile{
			FileHash:    n.file.GetFileHash(),
			FileSize:    n.file.GetFileSize(),
			Compression: n.file.GetCompression(),
		},
	})
	if errors.Is(err, fault.ErrInvalid) {
		return &missError{result: resultRefused, remember: true, err: fmt.Errorf("%s: %v", ni.StorePath, err)}
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", ni.StorePath, err)
	}
	return nil
}
