package catalog

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// The records of the path buckets (paths, quarantine, local) and of the
// NAR file buckets (nars, quarantine-nars) are stored compactly (schema 2):
// a zero byte, then protobuf wire fields that hold digests, hash parts and
// signatures as raw bytes instead of text, and leave out what the key or
// the rest of the record already says (the hash part of the store path,
// the default store directory, the URL, a NAR file's NAR hash and size
// when they are the path's). Every string that would not come back
// exactly from its compact form is kept as text, so that decoding gives
// back the very message that was encoded. Fields of the messages this
// file does not know (added later) are kept as a marshalled message.
//
// Schema 1 records are marshalled messages; a marshalled message never
// starts with a zero byte (field number 0 does not exist), so both are
// read (decodePath, decodeNarFile): a catalogue being migrated, or one an
// old index or loader added to, stays readable.

// compactMark starts every compact record.
const compactMark = 0x00

// defaultStoreDir is left out of compact path records.
const defaultStoreDir = "/nix/store"

// Field numbers of a compact path record.
const (
	pStoreDir      = 1  // string: the store directory, when not defaultStoreDir
	pName          = 2  // string: the name after "<hash part>-"
	pStorePath     = 3  // string: the store path, when it is not <dir>/<key>-<name>
	pNarHash       = 4  // bytes: compact hash
	pNarHashText   = 5  // string
	pNarSize       = 6  // varint
	pRef           = 7  // bytes: 20-byte digest then name; empty: the path itself
	pRefText       = 8  // string
	pDeriver       = 9  // bytes: 20-byte digest then name without ".drv"; the digest alone: the path's name
	pDeriverText   = 10 // string
	pSig           = 11 // bytes: 64 raw bytes then the key name
	pSigText       = 12 // string
	pCA            = 13 // string
	pFile          = 14 // bytes: a compact NAR file (without the mark)
	pURL           = 15 // string, when not the one derived from the file
	pRegistered    = 16 // bytes: zigzag seconds, nanos
	pOther         = 17 // bytes: a marshalled PathInfo with the fields above cleared
	pDeriverNameEq = 18 // varint 1: the deriver is "<digest>-<the path's name>.drv"
)

// Field numbers of a compact NAR file record.
const (
	fFileHash     = 1 // bytes: compact hash
	fFileHashText = 2 // string
	fFileSize     = 3 // varint
	fCompression  = 4 // string
	fNarHash      = 5 // bytes: compact hash
	fNarHashText  = 6 // string
	fNarSize      = 7 // varint
	fSameNar      = 8 // varint 1: NAR hash and size are the path's
	fOther        = 9 // bytes: a marshalled NarFile with the fields above cleared
)

// compactHash is the algorithm byte then the digest of a hash written
// "<algo>:<nix32>", or nil when s is not exactly that.
func compactHash(s string) []byte {
	h, err := nixhash.Parse(s)
	if err != nil || h.String() != s {
		return nil
	}
	return append([]byte{byte(h.Algo)}, h.Digest...)
}

func hashText(b []byte) (string, error) {
	if len(b) == 0 {
		return "", errors.New("empty hash")
	}
	a := nixhash.Algorithm(b[0])
	if a.Size() != len(b)-1 {
		return "", fmt.Errorf("hash of algorithm %d has %d bytes", b[0], len(b)-1)
	}
	return nixhash.Hash{Algo: a, Digest: b[1:]}.String(), nil
}

// hashDigest is the 20-byte digest of a 32-character hash part, or nil
// when it would not encode back to h.
func hashDigest(h string) []byte {
	if len(h) != 32 {
		return nil
	}
	d, err := nixbase32.DecodeString(h)
	if err != nil || len(d) != 20 || nixbase32.EncodeToString(d) != h {
		return nil
	}
	return d
}

// compactBase is the digest then the name of "<hash part>-<name>", or nil.
func compactBase(base string) []byte {
	if len(base) < 33 || base[32] != '-' {
		return nil
	}
	d := hashDigest(base[:32])
	if d == nil {
		return nil
	}
	return append(d, base[33:]...)
}

func baseText(b []byte) (string, error) {
	if len(b) < 20 {
		return "", fmt.Errorf("store path base of %d bytes", len(b))
	}
	return nixbase32.EncodeToString(b[:20]) + "-" + string(b[20:]), nil
}

// compactSig is the 64 raw bytes then the key name of "<name>:<base64>".
func compactSig(sig string) []byte {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok {
		return nil
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(raw) != 64 || base64.StdEncoding.EncodeToString(raw) != b64 {
		return nil
	}
	return append(raw, name...)
}

func sigText(b []byte) (string, error) {
	if len(b) < 64 {
		return "", fmt.Errorf("signature of %d bytes", len(b))
	}
	return string(b[64:]) + ":" + base64.StdEncoding.EncodeToString(b[:64]), nil
}

// narURL is the URL the publisher gives a path served from nf.
func narURL(nf *indexv1.NarFile) string {
	if nf == nil {
		return ""
	}
	ext, err := compression.Extension(nf.GetCompression())
	if err != nil {
		return ""
	}
	return "nar/" + strings.TrimPrefix(nf.GetFileHash(), "sha256:") + ".nar" + ext
}

// encodePath encodes info, stored under the hash part key.
func encodePath(key string, info *indexv1.PathInfo) ([]byte, error) {
	b := []byte{compactMark}
	str := func(num protowire.Number, s string) {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	byt := func(num protowire.Number, v []byte) {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
	}
	vint := func(num protowire.Number, v uint64) {
		b = protowire.AppendTag(b, num, protowire.VarintType)
		b = protowire.AppendVarint(b, v)
	}

	sp := info.GetStorePath()
	name := ""
	if i := strings.LastIndexByte(sp, '/'); i >= 0 && strings.HasPrefix(sp[i+1:], key+"-") && key != "" {
		if dir := sp[:i]; dir != defaultStoreDir {
			str(pStoreDir, dir)
		}
		name = sp[i+1+len(key)+1:]
		str(pName, name)
	} else if sp != "" {
		str(pStorePath, sp)
	}
	if nh := info.GetNarHash(); nh != "" {
		if c := compactHash(nh); c != nil {
			byt(pNarHash, c)
		} else {
			str(pNarHashText, nh)
		}
	}
	if info.GetNarSize() != 0 {
		vint(pNarSize, info.GetNarSize())
	}
	for _, ref := range info.GetReferences() {
		switch c := compactBase(ref); {
		case name != "" && ref == key+"-"+name:
			byt(pRef, nil)
		case c != nil:
			byt(pRef, c)
		default:
			str(pRefText, ref)
		}
	}
	if d := info.GetDeriver(); d != "" {
		c := compactBase(d)
		switch {
		case c != nil && name != "" && d[33:] == name+".drv":
			byt(pDeriver, c[:20])
			vint(pDeriverNameEq, 1)
		case c != nil && strings.HasSuffix(d, ".drv"):
			byt(pDeriver, c[:len(c)-4])
		default:
			str(pDeriverText, d)
		}
	}
	for _, sig := range info.GetSignatures() {
		if c := compactSig(sig); c != nil {
			byt(pSig, c)
		} else {
			str(pSigText, sig)
		}
	}
	if ca := info.GetCa(); ca != "" {
		str(pCA, ca)
	}
	if nf := info.GetFile(); nf != nil {
		f, err := encodeNarFileFields(nf, info)
		if err != nil {
			return nil, err
		}
		byt(pFile, f)
	}
	if u := info.GetUrl(); u != narURL(info.GetFile()) || (u == "" && info.GetFile() != nil) {
		str(pURL, u)
	}
	if t := info.GetRegistrationTime(); t != nil {
		r := protowire.AppendVarint(nil, protowire.EncodeZigZag(t.GetSeconds()))
		r = protowire.AppendVarint(r, uint64(uint32(t.GetNanos())))
		byt(pRegistered, r)
	}
	// Whatever else the message holds (fields added after this code, and
	// unknown ones) goes in as is.
	rest := proto.Clone(info).(*indexv1.PathInfo)
	rest.StorePath, rest.NarHash, rest.NarSize, rest.References, rest.Deriver = "", "", 0, nil, ""
	rest.Signatures, rest.Ca, rest.File, rest.Url, rest.RegistrationTime = nil, "", nil, "", nil
	if proto.Size(rest) > 0 {
		o, err := proto.MarshalOptions{Deterministic: true}.Marshal(rest)
		if err != nil {
			return nil, fmt.Errorf("encode: %w", err)
		}
		byt(pOther, o)
	}
	return b, nil
}

// decodePath decodes the record v of key (either schema) into a new
// PathInfo; v may be bbolt's memory: nothing of it is kept.
func decodePath(key string, v []byte) (*indexv1.PathInfo, error) {
	info := new(indexv1.PathInfo)
	if len(v) == 0 || v[0] != compactMark {
		if err := proto.Unmarshal(v, info); err != nil {
			return nil, fmt.Errorf("decode %s: %w", key, err)
		}
		return info, nil
	}
	var (
		dir, name  = defaultStoreDir, ""
		haveName   bool
		haveURL    bool
		fileFields []byte
		deriver    []byte
		deriverEq  bool
	)
	err := eachField(v[1:], func(num protowire.Number, typ protowire.Type, val []byte, n uint64) error {
		var err error
		switch num {
		case pStoreDir:
			dir = string(val)
		case pName:
			name, haveName = string(val), true
		case pStorePath:
			info.StorePath = string(val)
		case pNarHash:
			info.NarHash, err = hashText(val)
		case pNarHashText:
			info.NarHash = string(val)
		case pNarSize:
			info.NarSize = n
		case pRef:
			if len(val) == 0 {
				info.References = append(info.References, key+"-"+name)
				break
			}
			var ref string
			ref, err = baseText(val)
			info.References = append(info.References, ref)
		case pRefText:
			info.References = append(info.References, string(val))
		case pDeriver:
			deriver = val
		case pDeriverText:
			info.Deriver = string(val)
		case pDeriverNameEq:
			deriverEq = n == 1
		case pSig:
			var sig string
			sig, err = sigText(val)
			info.Signatures = append(info.Signatures, sig)
		case pSigText:
			info.Signatures = append(info.Signatures, string(val))
		case pCA:
			info.Ca = string(val)
		case pFile:
			fileFields = val
		case pURL:
			info.Url, haveURL = string(val), true
		case pRegistered:
			secs, m := protowire.ConsumeVarint(val)
			if m < 0 {
				return errors.New("bad registration time")
			}
			nanos, k := protowire.ConsumeVarint(val[m:])
			if k < 0 {
				return errors.New("bad registration time")
			}
			info.RegistrationTime = &timestamppb.Timestamp{Seconds: protowire.DecodeZigZag(secs), Nanos: int32(nanos)}
		case pOther:
			err = proto.UnmarshalOptions{Merge: true}.Unmarshal(val, info)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	if haveName {
		info.StorePath = dir + "/" + key + "-" + name
	}
	if deriver != nil {
		d, err := baseText(deriver)
		if err != nil {
			return nil, fmt.Errorf("decode %s: deriver: %w", key, err)
		}
		if deriverEq {
			d += name
		}
		info.Deriver = d + ".drv"
	}
	if fileFields != nil {
		if info.File, err = decodeNarFileFields(fileFields, info); err != nil {
			return nil, fmt.Errorf("decode %s: %w", key, err)
		}
	}
	if !haveURL {
		info.Url = narURL(info.File)
	}
	return info, nil
}

// encodeNarFile encodes a record of the NAR file buckets.
func encodeNarFile(nf *indexv1.NarFile) ([]byte, error) {
	f, err := encodeNarFileFields(nf, nil)
	if err != nil {
		return nil, err
	}
	return append([]byte{compactMark}, f...), nil
}

// decodeNarFile decodes a record of the NAR file buckets (either schema).
func decodeNarFile(v []byte) (*indexv1.NarFile, error) {
	if len(v) == 0 || v[0] != compactMark {
		nf := new(indexv1.NarFile)
		if err := proto.Unmarshal(v, nf); err != nil {
			return nil, fmt.Errorf("decode NAR file: %w", err)
		}
		return nf, nil
	}
	nf, err := decodeNarFileFields(v[1:], nil)
	if err != nil {
		return nil, fmt.Errorf("decode NAR file: %w", err)
	}
	return nf, nil
}

// encodeNarFileFields encodes nf; with path set, a NAR hash and size equal
// to the path's are left out.
func encodeNarFileFields(nf *indexv1.NarFile, path *indexv1.PathInfo) ([]byte, error) {
	var b []byte
	hash := func(num, text protowire.Number, s string) {
		if s == "" {
			return
		}
		if c := compactHash(s); c != nil {
			b = protowire.AppendTag(b, num, protowire.BytesType)
			b = protowire.AppendBytes(b, c)
		} else {
			b = protowire.AppendTag(b, text, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	vint := func(num protowire.Number, v uint64) {
		b = protowire.AppendTag(b, num, protowire.VarintType)
		b = protowire.AppendVarint(b, v)
	}
	hash(fFileHash, fFileHashText, nf.GetFileHash())
	if nf.GetFileSize() != 0 {
		vint(fFileSize, nf.GetFileSize())
	}
	if c := nf.GetCompression(); c != "" {
		b = protowire.AppendTag(b, fCompression, protowire.BytesType)
		b = protowire.AppendString(b, c)
	}
	if path != nil && nf.GetNarHash() == path.GetNarHash() && nf.GetNarSize() == path.GetNarSize() {
		vint(fSameNar, 1)
	} else {
		hash(fNarHash, fNarHashText, nf.GetNarHash())
		if nf.GetNarSize() != 0 {
			vint(fNarSize, nf.GetNarSize())
		}
	}
	rest := proto.Clone(nf).(*indexv1.NarFile)
	rest.FileHash, rest.FileSize, rest.Compression, rest.NarHash, rest.NarSize = "", 0, "", "", 0
	if proto.Size(rest) > 0 {
		o, err := proto.MarshalOptions{Deterministic: true}.Marshal(rest)
		if err != nil {
			return nil, fmt.Errorf("encode: %w", err)
		}
		b = protowire.AppendTag(b, fOther, protowire.BytesType)
		b = protowire.AppendBytes(b, o)
	}
	return b, nil
}

func decodeNarFileFields(v []byte, path *indexv1.PathInfo) (*indexv1.NarFile, error) {
	nf := new(indexv1.NarFile)
	err := eachField(v, func(num protowire.Number, _ protowire.Type, val []byte, n uint64) error {
		var err error
		switch num {
		case fFileHash:
			nf.FileHash, err = hashText(val)
		case fFileHashText:
			nf.FileHash = string(val)
		case fFileSize:
			nf.FileSize = n
		case fCompression:
			nf.Compression = string(val)
		case fNarHash:
			nf.NarHash, err = hashText(val)
		case fNarHashText:
			nf.NarHash = string(val)
		case fNarSize:
			nf.NarSize = n
		case fSameNar:
			if path == nil {
				return errors.New("NAR file record refers to a path")
			}
			nf.NarHash, nf.NarSize = path.GetNarHash(), path.GetNarSize()
		case fOther:
			err = proto.UnmarshalOptions{Merge: true}.Unmarshal(val, nf)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("NAR file: %w", err)
	}
	return nf, nil
}

// eachField calls fn for each field of the wire-format b: val is the
// payload of a bytes field, n the value of a varint one.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, val []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, m := protowire.ConsumeTag(b)
		if m < 0 {
			return protowire.ParseError(m)
		}
		b = b[m:]
		var (
			val []byte
			n   uint64
		)
		switch typ {
		case protowire.BytesType:
			val, m = protowire.ConsumeBytes(b)
			if val == nil && m >= 0 {
				val = []byte{}
			}
		case protowire.VarintType:
			n, m = protowire.ConsumeVarint(b)
		default:
			m = protowire.ConsumeFieldValue(num, typ, b)
		}
		if m < 0 {
			return protowire.ParseError(m)
		}
		b = b[m:]
		if err := fn(num, typ, val, n); err != nil {
			return err
		}
	}
	return nil
}
