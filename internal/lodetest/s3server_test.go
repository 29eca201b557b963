package lodetest

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopS3Servers()
	os.Exit(code)
}

func client(t *testing.T, s S3) *minio.Client {
	c, err := minio.New(s.Endpoint[len("http://"):], &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: s.Region,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestS3ServerSharedBuckets(t *testing.T) {
	a, b := S3Server(t), S3Server(t)
	if a.Endpoint != b.Endpoint {
		t.Errorf("S3Server endpoints %s and %s differ, want one shared server", a.Endpoint, b.Endpoint)
	}
	if a.Bucket == b.Bucket {
		t.Errorf("S3Server returned bucket %s twice, want a new bucket per call", a.Bucket)
	}
	c := client(t, a)
	data := []byte("hello versitygw")
	if _, err := c.PutObject(t.Context(), a.Bucket, "k", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("PutObject: %v", err)
	}
	obj, err := c.GetObject(t.Context(), a.Bucket, "k", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("GetObject(k) = %q, %v, want %q", got, err, data)
	}
	if ok, err := c.BucketExists(t.Context(), b.Bucket); err != nil || !ok {
		t.Errorf("BucketExists(%s) = %v, %v, want true", b.Bucket, ok, err)
	}
	wantURL := "s3://" + a.Bucket + "/p/?endpoint=" + a.Endpoint + "&region=us-east-1&path_style=true"
	if got := a.URL("p/"); got != wantURL {
		t.Errorf("URL(p/) = %q, want %q", got, wantURL)
	}
}

func TestStartS3ServerStop(t *testing.T) {
	s := StartS3Server(t)
	c := client(t, s)
	if ok, err := c.BucketExists(t.Context(), s.Bucket); err != nil || !ok {
		t.Fatalf("BucketExists(%s) = %v, %v, want true", s.Bucket, ok, err)
	}
	s.Stop()
	s.Stop() // idempotent
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c2, _ := minio.New(s.Endpoint[len("http://"):], &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region, MaxRetries: 1,
	})
	if _, err := c2.BucketExists(ctx, s.Bucket); err == nil {
		t.Errorf("BucketExists after Stop succeeded, want a connection error")
	}
}
