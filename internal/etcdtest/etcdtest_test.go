package etcdtest

import (
	"context"
	"testing"
	"time"
)

func TestNewServesPutGet(t *testing.T) {
	c := New(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, Prefix(t)+"k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(ctx, Prefix(t)+"k")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	// Prefix is unique per call, so the second Prefix(t) names another key.
	if len(resp.Kvs) != 0 {
		t.Fatalf("prefixes are not unique: got %d keys", len(resp.Kvs))
	}
}
