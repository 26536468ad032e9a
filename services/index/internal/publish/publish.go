// Package publish turns an uploaded narinfo into a published, signed store
// path: it checks the narinfo against the NAR file the index measured and
// against the catalogue, has the signer sign the path's fingerprint, and
// records the result.
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// Signer signs fingerprints with the cache's keys.
type Signer interface {
	// Sign returns the signatures of each fingerprint, in order.
	Sign(ctx context.Context, fingerprints []string) ([][]string, error)
	// PublicKeys lists every key the signer holds, active or not.
	PublicKeys(ctx context.Context) ([]signature.PublicKey, error)
}

// Publisher publishes store paths into a catalogue.
type Publisher struct {
	catalog     *catalog.Catalog
	signer      Signer
	storeDir    string
	signTimeout time.Duration
	now         func() time.Time
	// trusted are the keys whose signatures an uploader may add to a
	// path (WithTrustedKeys); log tells of those dropped.
	trusted []signature.PublicKey
	log     *slog.Logger
	// host and nars, when set (WithHost), copy host paths pushed paths
	// refer to (adopt.go).
	host HostStore
	nars *narstore.Store
}

// MaxForeignSigs is the most signatures by keys other than the signer's a
// path keeps: each must verify against a trusted key, and the record stays
// small whatever is pushed.
const MaxForeignSigs = 8

// New returns a Publisher for paths of storeDir; each call to the signer
// gets signTimeout. It keeps no uploader's signature until
// WithTrustedKeys names keys.
func New(c *catalog.Catalog, s Signer, storeDir string, signTimeout time.Duration) *Publisher {
	return &Publisher{catalog: c, signer: s, storeDir: storeDir, signTimeout: signTimeout, now: time.Now,
		log: slog.New(slog.DiscardHandler)}
}

// WithTrustedKeys keeps an uploader's signatures made by one of keys, when
// they verify, at most MaxForeignSigs a path; every other signature by a
// key the signer does not hold is dropped and logged to log.
func (p *Publisher) WithTrustedKeys(keys []signature.PublicKey, log *slog.Logger) *Publisher {
	p.trusted, p.log = keys, log
	return p
}

// checked is a narinfo that passed every check.
type checked struct {
	path        storepath.Path
	narHash     nixhash.Hash
	file        *indexv1.NarFile
	fingerprint string
	// uploaderSigs are the uploader's signatures by trusted keys other
	// than ours, verified.
	uploaderSigs []string
	// ourKeys are the names of the signer's keys.
	ourKeys map[string]bool
}

// Publish verifies the narinfo in, then signs and records it, returning
// what the catalogue now holds. Re-publishing a path with the same NAR hash
// succeeds and merges in the uploader's new signatures; with another NAR
// hash it is an error of class fault.ErrExists. Nothing is recorded unless
// every check passed and the signer signed.
func (p *Publisher) Publish(ctx context.Context, in *indexv1.PathInfo) (*indexv1.PathInfo, error) {
	c, err := p.check(ctx, in)
	if err != nil {
		return nil, err
	}
	adopted, err := p.adopt(ctx, c.path, in.GetReferences())
	if err != nil {
		return nil, err
	}
	if _, err := p.catalog.PathInfo(c.path.HashPart); err == nil {
		// Already published: no new signature needed.
		stored, err := p.catalog.Adopt(adopted, c.path.HashPart, func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
			if old == nil {
				return nil, errDeleted
			}
			return merge(old, in.GetStorePath(), c, nil)
		})
		if !errors.Is(err, errDeleted) {
			return stored, err
		}
		// Deleted since: published anew, signed.
	} else if !errors.Is(err, fault.ErrNotFound) {
		return nil, err
	}

	sigs, err := p.sign(ctx, c.fingerprint)
	if err != nil {
		return nil, err
	}
	ext, err := compression.Extension(c.file.GetCompression())
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", in.GetStorePath(), err)
	}
	refs := slices.Clone(in.GetReferences())
	slices.Sort(refs)
	info := &indexv1.PathInfo{
		StorePath:        in.GetStorePath(),
		NarHash:          c.narHash.String(),
		NarSize:          in.GetNarSize(),
		References:       slices.Compact(refs),
		Deriver:          in.GetDeriver(),
		Signatures:       appendForeign(sigs, c.ourKeys, c.uploaderSigs...),
		Ca:               in.GetCa(),
		File:             c.file,
		Url:              "nar/" + strings.TrimPrefix(c.file.GetFileHash(), "sha256:") + ".nar" + ext,
		RegistrationTime: timestamppb.New(p.now()),
	}
	// The catalogue checks again, in the transaction that publishes, that
	// every reference is published (catalog/closure.go): a delete may
	// have come since check.
	return p.catalog.Adopt(adopted, c.path.HashPart, func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
		if old != nil {
			// Published meanwhile by another call.
			return merge(old, in.GetStorePath(), c, sigs)
		}
		return info, nil
	})
}

// errDeleted: a path found published was deleted before the transaction
// that would merge into it.
var errDeleted = errors.New("deleted meanwhile")

// merge returns old with the new signatures added, nil when it has them
// all, or an error when old is not the same path with the same NAR.
func merge(old *indexv1.PathInfo, storePath string, c *checked, signerSigs []string) (*indexv1.PathInfo, error) {
	if old.GetStorePath() != storePath {
		return nil, fault.Exists("store path %s cannot be published: its hash part is taken by %s", storePath, old.GetStorePath())
	}
	if old.GetNarHash() != c.narHash.String() {
		return nil, fault.Exists("store path %s is already published with NarHash %s; the narinfo says %s", storePath, old.GetNarHash(), c.narHash)
	}
	sigs := appendNew(old.GetSignatures(), signerSigs...)
	sigs = appendForeign(sigs, c.ourKeys, c.uploaderSigs...)
	if len(sigs) == len(old.GetSignatures()) {
		return nil, nil
	}
	next := proto.Clone(old).(*indexv1.PathInfo)
	next.Signatures = sigs
	return next, nil
}

// appendForeign appends to dst (copied) the signatures of add it does not
// hold while it holds fewer than MaxForeignSigs by keys not in ours.
func appendForeign(dst []string, ours map[string]bool, add ...string) []string {
	out := slices.Clone(dst)
	foreign := 0
	for _, s := range out {
		if name, _, err := signature.SplitSignature(s); err == nil && !ours[name] {
			foreign++
		}
	}
	for _, s := range add {
		if foreign >= MaxForeignSigs {
			break
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
			foreign++
		}
	}
	return out
}

// appendNew appends to dst (copied) the elements of add it does not hold.
func appendNew(dst []string, add ...string) []string {
	out := slices.Clone(dst)
	for _, s := range add {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// check verifies the narinfo, in order: its own fields, the NAR file it
// names, its references, its signatures.
func (p *Publisher) check(ctx context.Context, in *indexv1.PathInfo) (*checked, error) {
	if in == nil {
		return nil, fault.Invalid("no path info in the request")
	}
	var c checked
	var err error
	if c.path, err = storepath.Parse(p.storeDir, in.GetStorePath()); err != nil {
		return nil, fault.Invalid("StorePath: %v", err)
	}
	if c.narHash, err = nixhash.Parse(in.GetNarHash()); err != nil {
		return nil, fault.Invalid("NarHash: %v", err)
	}
	if c.narHash.Algo != nixhash.SHA256 {
		return nil, fault.Invalid("NarHash %s: want a sha256 hash", in.GetNarHash())
	}
	if in.GetNarSize() == 0 {
		return nil, fault.Invalid("NarSize is 0 or missing")
	}
	for _, ref := range in.GetReferences() {
		if _, err := storepath.ParseBase(ref); err != nil {
			return nil, fault.Invalid("References: %v", err)
		}
	}
	if d := in.GetDeriver(); d != "" {
		if _, err := storepath.ParseBase(d); err != nil {
			return nil, fault.Invalid("Deriver: %v", err)
		}
	}
	if ca := in.GetCa(); ca != "" && !strings.HasPrefix(ca, "fixed:") && !strings.HasPrefix(ca, "text:") {
		return nil, fault.Invalid("CA %q: want fixed:... or text:...", ca)
	}

	if c.file, err = p.checkFile(in); err != nil {
		return nil, err
	}
	if err := p.checkReferences(in, c.path); err != nil {
		return nil, err
	}

	c.fingerprint = signature.Fingerprint(p.storeDir, in.GetStorePath(), c.narHash, in.GetNarSize(), in.GetReferences())
	if c.uploaderSigs, c.ourKeys, err = p.checkSignatures(ctx, in, c.fingerprint); err != nil {
		return nil, err
	}
	return &c, nil
}

// checkFile finds the NAR file the narinfo names and compares it with
// what the narinfo says.
func (p *Publisher) checkFile(in *indexv1.PathInfo) (*indexv1.NarFile, error) {
	want := in.GetFile()
	if want.GetFileHash() == "" {
		return nil, fault.Invalid("FileHash is missing: the narinfo must name its uploaded NAR file")
	}
	fileHash, err := nixhash.ParseAs(nixhash.SHA256, want.GetFileHash())
	if err != nil {
		return nil, fault.Invalid("FileHash: %v", err)
	}
	nf, err := p.catalog.NarFile(fileHash.NixBase32())
	if errors.Is(err, fault.ErrNotFound) {
		return nil, fault.Precondition("the NAR file %s named by the narinfo has not been uploaded", fileHash)
	}
	if err != nil {
		return nil, err
	}
	if c := want.GetCompression(); c != "" && c != nf.GetCompression() {
		return nil, fault.Invalid("Compression mismatch: narinfo says %s, the uploaded NAR file %s is %s", c, fileHash, nf.GetCompression())
	}
	if s := want.GetFileSize(); s != 0 && s != nf.GetFileSize() {
		return nil, fault.Invalid("FileSize mismatch: narinfo says %d, the uploaded NAR file %s is %d bytes", s, fileHash, nf.GetFileSize())
	}
	measured, err := nixhash.Parse(nf.GetNarHash())
	if err != nil {
		return nil, fmt.Errorf("NAR file %s: stored NAR hash: %w", fileHash, err)
	}
	narHash, _ := nixhash.Parse(in.GetNarHash())
	if !narHash.Equal(measured) {
		return nil, fault.Invalid("NarHash mismatch: narinfo says %s, the uploaded NAR hashes to %s", narHash, measured)
	}
	if in.GetNarSize() != nf.GetNarSize() {
		return nil, fault.Invalid("NarSize mismatch: narinfo says %d, the uploaded NAR is %d bytes", in.GetNarSize(), nf.GetNarSize())
	}
	return nf, nil
}

// checkReferences makes sure every reference but the path itself is
// published, so that the cache never serves a path whose closure it lacks.
// A path of the host's store the index serves counts: nix copy --to skips
// what the cache already has, whichever way it has it; the publisher
// copies it (adopt.go). This is the early answer; the catalogue checks
// again as it publishes.
func (p *Publisher) checkReferences(in *indexv1.PathInfo, self storepath.Path) error {
	for _, ref := range in.GetReferences() {
		if ref == self.Base() {
			continue
		}
		rp, _ := storepath.ParseBase(ref)
		info, err := p.catalog.PathInfo(rp.HashPart)
		if errors.Is(err, fault.ErrNotFound) {
			info, _, err = p.catalog.LocalPathInfo(rp.HashPart)
		}
		if errors.Is(err, fault.ErrNotFound) || (err == nil && info.GetStorePath() != rp.Absolute(p.storeDir)) {
			return fault.Precondition("reference %s is not in the cache", ref)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// checkSignatures validates the uploader's signatures and returns those to
// keep, with the names of the signer's keys: every one by a key the signer
// holds must verify, and is then dropped (the signer signs again); one by
// a trusted key (WithTrustedKeys) is kept when it verifies; any other is
// dropped and logged. Without signatures the signer is not asked.
func (p *Publisher) checkSignatures(ctx context.Context, in *indexv1.PathInfo, fingerprint string) ([]string, map[string]bool, error) {
	sigs := in.GetSignatures()
	for i, sig := range sigs {
		if _, _, err := signature.SplitSignature(sig); err != nil {
			return nil, nil, fault.Invalid("Sig %d: %v", i+1, err)
		}
	}
	if len(sigs) == 0 {
		return nil, nil, nil
	}
	callCtx, cancel := context.WithTimeout(ctx, p.signTimeout)
	defer cancel()
	keys, err := p.signer.PublicKeys(callCtx)
	if err != nil {
		if ctx.Err() != nil {
			// The caller went away: not the signer's fault.
			return nil, nil, fmt.Errorf("list signer keys: %w", ctx.Err())
		}
		return nil, nil, fault.Unavailable("signer unavailable: %v", err)
	}
	ours := make(map[string]bool, len(keys))
	for _, k := range keys {
		ours[k.Name] = true
	}
	var keep []string
	untrusted, bad := 0, 0
	for _, sig := range sigs {
		name, _, _ := signature.SplitSignature(sig)
		if i := slices.IndexFunc(keys, func(k signature.PublicKey) bool { return k.Name == name }); i >= 0 {
			if !keys[i].Verify(fingerprint, sig) {
				return nil, nil, fault.Invalid("forged signature by key %s: it does not verify for %s", name, in.GetStorePath())
			}
			continue
		}
		i := slices.IndexFunc(p.trusted, func(k signature.PublicKey) bool { return k.Name == name })
		switch {
		case i < 0:
			untrusted++
		case len(keep) >= MaxForeignSigs || slices.Contains(keep, sig):
			// Checked no further: the path keeps no more.
		case !p.trusted[i].Verify(fingerprint, sig):
			bad++
		default:
			keep = append(keep, sig)
		}
	}
	if untrusted > 0 || bad > 0 {
		p.log.WarnContext(ctx, "dropped uploaded signatures", "store_path", in.GetStorePath(),
			"untrusted_key", untrusted, "not_verifying", bad, "kept", len(keep))
	}
	return keep, ours, nil
}

// sign has the signer sign fingerprint, within the sign timeout.
func (p *Publisher) sign(ctx context.Context, fingerprint string) ([]string, error) {
	res, err := p.signing().SignFingerprints(ctx, []string{fingerprint})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// signing is how the signer is asked: package signerclient's one policy.
func (p *Publisher) signing() signerclient.Paths {
	return signerclient.Paths{Signer: p.signer, StoreDir: p.storeDir, Timeout: p.signTimeout}
}
