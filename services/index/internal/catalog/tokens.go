package catalog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Buckets of the tokens, created at Open.
var (
	// tokensBucket maps the SHA-256 digest of a token's secret (32 bytes)
	// to its indexv1.Token (protobuf, last_used unset). The secret itself
	// is never stored.
	tokensBucket = []byte("tokens")
	// tokenUseBucket maps a token's name to the unix nanoseconds it was
	// last used (8 bytes, big endian), for the catalogue's tokens and the
	// token file's alike; written in batches (RecordTokenUse).
	tokenUseBucket = []byte("token-use")
)

// TokenDigest is the SHA-256 digest of a token's secret.
type TokenDigest [sha256.Size]byte

// CreateToken stores tok under the digest of its secret. The name must
// be unused (fault.ErrAlreadyExists otherwise); a token with the same
// digest is refused alike. Watchers hear TOKENS_CHANGED after the commit.
func (c *Catalog) CreateToken(digest TokenDigest, tok *indexv1.Token) error {
	v, err := proto.Marshal(tok)
	if err != nil {
		return fmt.Errorf("create token %s: %w", tok.GetName(), err)
	}
	err = c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(tokensBucket)
		if b.Get(digest[:]) != nil {
			return fault.Exists("a token with this secret exists")
		}
		if k, _, err := findToken(b, tok.GetName()); err != nil {
			return err
		} else if k != nil {
			return fault.Exists("token %q exists", tok.GetName())
		}
		// A use recorded under the name of a token revoked since is not
		// this token's.
		if err := tx.Bucket(tokenUseBucket).Delete([]byte(tok.GetName())); err != nil {
			return err
		}
		return b.Put(bytes.Clone(digest[:]), v)
	})
	if err != nil {
		return fmt.Errorf("create token %s: %w", tok.GetName(), err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_TOKENS_CHANGED)
	return nil
}

// findToken returns the key and record of the token named name in b, or
// a nil key.
func findToken(b *bolt.Bucket, name string) ([]byte, *indexv1.Token, error) {
	cur := b.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		tok, err := decodeToken(v)
		if err != nil {
			return nil, nil, fmt.Errorf("token record %x: %w", k[:4], err)
		}
		if tok.GetName() == name {
			return bytes.Clone(k), tok, nil
		}
	}
	return nil, nil, nil
}

func decodeToken(v []byte) (*indexv1.Token, error) {
	tok := &indexv1.Token{}
	if err := proto.Unmarshal(v, tok); err != nil {
		return nil, err
	}
	return tok, nil
}

// Token returns the token whose secret has this digest, with its last
// use, or nil when there is none (revoked or never made).
func (c *Catalog) Token(digest TokenDigest) (*indexv1.Token, error) {
	var tok *indexv1.Token
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(tokensBucket).Get(digest[:])
		if v == nil {
			return nil
		}
		var err error
		if tok, err = decodeToken(v); err != nil {
			return err
		}
		tok.LastUsed = lastUse(tx, tok.GetName())
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	return tok, nil
}

// Tokens returns every token of the catalogue, in name order, with their
// last uses.
func (c *Catalog) Tokens() ([]*indexv1.Token, error) {
	var toks []*indexv1.Token
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(tokensBucket).ForEach(func(k, v []byte) error {
			tok, err := decodeToken(v)
			if err != nil {
				return fmt.Errorf("token record %x: %w", k[:4], err)
			}
			tok.LastUsed = lastUse(tx, tok.GetName())
			toks = append(toks, tok)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	sort.Slice(toks, func(i, j int) bool { return toks[i].GetName() < toks[j].GetName() })
	return toks, nil
}

// RevokeToken deletes the token named name and returns it as it was, or
// an error of class fault.ErrNotFound. Watchers hear TOKENS_CHANGED after
// the commit.
func (c *Catalog) RevokeToken(name string) (*indexv1.Token, error) {
	var tok *indexv1.Token
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(tokensBucket)
		k, t, err := findToken(b, name)
		if err != nil || k == nil {
			return err
		}
		tok = t
		tok.LastUsed = lastUse(tx, name)
		if err := tx.Bucket(tokenUseBucket).Delete([]byte(name)); err != nil {
			return err
		}
		return b.Delete(k)
	})
	if err != nil {
		return nil, fmt.Errorf("revoke token %s: %w", name, err)
	}
	if tok == nil {
		return nil, fault.NotFound("no token %q in the catalogue", name)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_TOKENS_CHANGED)
	return tok, nil
}

// TokenUse returns the last use recorded of the token named name; nil if
// none.
func (c *Catalog) TokenUse(name string) (*timestamppb.Timestamp, error) {
	var ts *timestamppb.Timestamp
	err := c.db.View(func(tx *bolt.Tx) error {
		ts = lastUse(tx, name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read token use: %w", err)
	}
	return ts, nil
}

// RecordTokenUse records the last uses of tokens by name, in one
// transaction; an earlier time than the one stored is ignored. Names of
// tokens that no longer exist are the caller's to leave out (a use
// recorded for a token revoked since is dropped when a token of that
// name is made).
func (c *Catalog) RecordTokenUse(uses map[string]time.Time) error {
	if len(uses) == 0 {
		return nil
	}
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(tokenUseBucket)
		for name, at := range uses {
			if old := b.Get([]byte(name)); len(old) == 8 && int64(binary.BigEndian.Uint64(old)) >= at.UnixNano() {
				continue
			}
			if err := b.Put([]byte(name), binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano()))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record token use: %w", err)
	}
	return nil
}

// lastUse reads the last use of the token named name; nil if none.
func lastUse(tx *bolt.Tx, name string) *timestamppb.Timestamp {
	v := tx.Bucket(tokenUseBucket).Get([]byte(name))
	if len(v) != 8 {
		return nil
	}
	return timestamppb.New(time.Unix(0, int64(binary.BigEndian.Uint64(v))))
}
