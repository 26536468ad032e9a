package push

import (
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/nixcache/nixcache/nix/compression"
)

// compressor makes the compressing writers of one push.
type compressor struct {
	name string // compression.None, Zstd or XZ
	ext  string // of the NAR's URL, e.g. ".nar.zst"
	zstd sync.Pool
	opts []zstd.EOption
}

func newCompressor(name string, zstdLevel, zstdThreads int) (*compressor, error) {
	ext, err := compression.Extension(name)
	if err != nil {
		return nil, err
	}
	c := &compressor{name: name, ext: ".nar" + ext}
	switch name {
	case compression.None, compression.XZ:
	case compression.Zstd:
		if zstdLevel < 1 || zstdLevel > 22 {
			return nil, fmt.Errorf("zstd level %d: want 1 to 22", zstdLevel)
		}
		if zstdThreads <= 0 {
			zstdThreads = runtime.GOMAXPROCS(0)
		}
		c.opts = []zstd.EOption{
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(zstdLevel)),
			zstd.WithEncoderConcurrency(zstdThreads),
		}
		if _, err := zstd.NewWriter(nil, c.opts...); err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
	default:
		return nil, fmt.Errorf("compression %q: want none, zstd or xz", name)
	}
	return c, nil
}

// writer returns a writer compressing into w; done finishes the stream
// (and releases the writer) and must be called once.
func (c *compressor) writer(w io.Writer) (io.Writer, func() error, error) {
	if c.name != compression.Zstd {
		cw, err := compression.NewWriter(c.name, w)
		if err != nil {
			return nil, nil, err
		}
		return cw, cw.Close, nil
	}
	zw, _ := c.zstd.Get().(*zstd.Encoder)
	if zw == nil {
		var err error
		if zw, err = zstd.NewWriter(w, c.opts...); err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
	} else {
		zw.Reset(w)
	}
	return zw, func() error {
		err := zw.Close()
		if err == nil {
			c.zstd.Put(zw)
		}
		return err
	}, nil
}
