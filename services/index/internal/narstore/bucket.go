package narstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// BucketConfig says where the bucket is and how to reach it.
type BucketConfig struct {
	// Endpoint is the S3 API's URL, "https://s3.amazonaws.com" or
	// "http://127.0.0.1:7070"; the scheme says whether TLS is used.
	Endpoint string
	// PresignEndpoint is the URL clients reach the same S3 API at, for the
	// presigned URLs ("": Endpoint).
	PresignEndpoint string
	Bucket          string
	// Prefix is put before every object name ("cache/" puts the files
	// under cache/nars/...).
	Prefix string
	// Region of the bucket; it is part of every signature.
	Region string
	// PathStyle addresses the bucket as <endpoint>/<bucket>/ rather than
	// <bucket>.<endpoint>/ (most self-hosted servers need it).
	PathStyle bool
	// CredentialsFile is an AWS shared-credentials file (profile
	// $AWS_PROFILE, else "default"); "" reads AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN from the environment.
	CredentialsFile string
	// PartSize is the size of the parts of a multipart upload; files
	// larger than one part are uploaded in parts (0: 16 MiB).
	PartSize uint64
	// MaxRetries bounds the attempts of one request (0: the library's 10).
	MaxRetries int
	// CreateBucket makes the bucket when it does not exist, rather than
	// refusing to start.
	CreateBucket bool
}

// MinPartSize is the smallest part S3 accepts in a multipart upload.
const MinPartSize = 5 << 20

// Bucket is a Backend over an S3-compatible bucket. Uploads are streamed
// from the verified temporary file (multipart past one part, the parts
// read from the file, never held whole in memory); an upload that fails
// is aborted, leaving no object and no parts.
type Bucket struct {
	client    *minio.Client
	presigner *minio.Client
	bucket    string
	// names is the prefix of every object: Prefix + "nars/".
	names    string
	partSize uint64
	where    string
}

// OpenBucket connects to the bucket and checks that it exists and that
// the credentials are accepted. Its errors name the flag to fix.
func OpenBucket(ctx context.Context, cfg BucketConfig) (*Bucket, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("-s3-bucket is empty")
	}
	if cfg.PartSize != 0 && cfg.PartSize < MinPartSize {
		return nil, fmt.Errorf("-s3-part-size %d is below S3's minimum part size of %d bytes", cfg.PartSize, MinPartSize)
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	creds, err := bucketCredentials(cfg.CredentialsFile)
	if err != nil {
		return nil, err
	}
	client, endpoint, err := newS3Client("-s3-endpoint", cfg.Endpoint, cfg, creds)
	if err != nil {
		return nil, err
	}
	b := &Bucket{client: client, presigner: client, bucket: cfg.Bucket, names: cfg.Prefix + "nars/",
		partSize: cfg.PartSize, where: fmt.Sprintf("bucket %s at %s", cfg.Bucket, endpoint)}
	if cfg.PresignEndpoint != "" {
		if b.presigner, _, err = newS3Client("-s3-presign-endpoint", cfg.PresignEndpoint, cfg, creds); err != nil {
			return nil, err
		}
	}
	exists, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		code := minio.ToErrorResponse(err).Code
		switch {
		case code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "InvalidToken" || code == "ExpiredToken":
			return nil, fmt.Errorf("%s refused the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or -s3-credentials-file; -s3-region): %w", b.where, err)
		case code == "":
			return nil, fmt.Errorf("-s3-endpoint %s does not answer: %w", endpoint, err)
		default:
			return nil, fmt.Errorf("%s: %w", b.where, err)
		}
	}
	if !exists && cfg.CreateBucket {
		if err := client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
			return nil, fmt.Errorf("-s3-create-bucket: make bucket %q at %s: %w", cfg.Bucket, endpoint, err)
		}
		exists = true
	}
	if !exists {
		return nil, fmt.Errorf("-s3-bucket: there is no bucket %q at %s; create it first (or -s3-create-bucket)", cfg.Bucket, endpoint)
	}
	return b, nil
}

// bucketCredentials reads the credentials from file or the environment.
func bucketCredentials(file string) (*credentials.Credentials, error) {
	var creds *credentials.Credentials
	if file != "" {
		if _, err := os.Stat(file); err != nil {
			return nil, fmt.Errorf("-s3-credentials-file: %w", err)
		}
		creds = credentials.NewFileAWSCredentials(file, "")
	} else {
		creds = credentials.NewEnvAWS()
	}
	v, err := creds.GetWithContext(nil)
	if err != nil || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		if file != "" {
			return nil, fmt.Errorf("-s3-credentials-file %s: no aws_access_key_id and aws_secret_access_key in profile $AWS_PROFILE or [default]", file)
		}
		return nil, errors.New("-nar-backend=s3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or -s3-credentials-file")
	}
	return creds, nil
}

// newS3Client makes a client of the S3 API at rawURL (flag names it).
func newS3Client(flag, rawURL string, cfg BucketConfig, creds *credentials.Credentials) (*minio.Client, string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, "", fmt.Errorf("%s %q: want http://host[:port] or https://host[:port]", flag, rawURL)
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:        creds,
		Secure:       u.Scheme == "https",
		Region:       cfg.Region,
		BucketLookup: lookup,
		MaxRetries:   cfg.MaxRetries,
	})
	if err != nil {
		return nil, "", fmt.Errorf("%s %q: %w", flag, rawURL, err)
	}
	return client, u.Scheme + "://" + u.Host, nil
}

func (b *Bucket) String() string { return b.where }

// object is the object name of key.
func (b *Bucket) object(key string) string { return b.names + key }

// Put uploads the file, in parts when it is larger than one; on failure
// the library aborts the multipart upload, so no object and no parts are
// left (and an object stored before under the name is kept).
func (b *Bucket) Put(ctx context.Context, key string, file *os.File, size int64) error {
	defer func() {
		file.Close()
		os.Remove(file.Name())
	}()
	_, err := b.client.PutObject(ctx, b.bucket, b.object(key), file, size, minio.PutObjectOptions{
		ContentType: "application/x-nix-nar",
		PartSize:    b.partSize,
		// An unsigned payload, not the streaming signature the library
		// uses over plain HTTP: that one is sent as Content-Encoding
		// aws-chunked, which some servers (Versity Gateway 1.8) keep and
		// serve back, and Nix, following -nar-redirect, then fails to
		// decode the NAR. The bytes were verified before; Verify checks
		// them in the bucket.
		DisableContentSha256: true,
	})
	if err != nil {
		return b.classify(err, "upload", b.object(key))
	}
	return nil
}

// Open starts a GET of the object, of the range asked for.
func (b *Bucket) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		if err := opts.SetRange(offset, offset+length-1); err != nil {
			return nil, err
		}
	case offset > 0:
		if err := opts.SetRange(offset, 0); err != nil {
			return nil, err
		}
	}
	body, _, _, err := minio.Core{Client: b.client}.GetObject(ctx, b.bucket, b.object(key), opts)
	if err != nil {
		return nil, b.classify(err, "get", b.object(key))
	}
	return body, nil
}

// Remove deletes the object (S3 deletes a missing one without error).
func (b *Bucket) Remove(ctx context.Context, key string) error {
	if err := b.client.RemoveObject(ctx, b.bucket, b.object(key), minio.RemoveObjectOptions{}); err != nil {
		return b.classify(err, "delete", b.object(key))
	}
	return nil
}

// Stat asks for the object's size.
func (b *Bucket) Stat(ctx context.Context, key string) (int64, error) {
	info, err := b.client.StatObject(ctx, b.bucket, b.object(key), minio.StatObjectOptions{})
	if err != nil {
		return 0, b.classify(err, "stat", b.object(key))
	}
	return info.Size, nil
}

// Walk lists the objects under the prefix.
func (b *Bucket) Walk(ctx context.Context, fn func(key string, size int64) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing when fn fails
	for obj := range b.client.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.names, Recursive: true}) {
		if obj.Err != nil {
			return b.classify(obj.Err, "list", b.names)
		}
		if err := fn(strings.TrimPrefix(obj.Key, b.names), obj.Size); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Presign signs a GET of the object, for the presign endpoint.
func (b *Bucket) Presign(ctx context.Context, key string, expiry time.Duration) (string, error) {
	u, err := b.presigner.PresignedGetObject(ctx, b.bucket, b.object(key), expiry, nil)
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

// classify describes err, the library's error for the operation op on
// name, making it match fs.ErrNotExist when the object is missing, and
// fault.ErrUnavailable when the S3 server could not be reached or failed.
func (b *Bucket) classify(err error, op, name string) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound && resp.Code != "NoSuchBucket":
		return fmt.Errorf("%s %s: %w: %w", op, name, err, fs.ErrNotExist)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s %s: %w", op, name, err)
	case resp.Code == "" || resp.StatusCode >= 500:
		return fault.Unavailable("%s: %s %s: %v", b.where, op, name, err)
	}
	return fmt.Errorf("%s %s: %w", op, name, err)
}
