package etcdtest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

func TestNewServesPutGet(t *testing.T) {
	c := New(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(10*time.Second))
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

func TestStopStartKeepsData(t *testing.T) {
	c := New(t)
	cli := c.Client(t)
	key := Prefix(t) + "k"
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
	defer cancel()
	if _, err := cli.Put(ctx, key, "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c.Stop()
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := cli.Get(short, key)
	cancelShort()
	if err == nil {
		t.Fatalf("get succeeded while etcd was stopped")
	}
	c.Start()
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

func TestMain(m *testing.M) { os.Exit(WithShared(m).Run()) }

func TestSharedIsOneMember(t *testing.T) {
	var first *Cluster
	for i := range 2 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			c := Shared(t)
			if first == nil {
				first = c
			} else if c != first {
				t.Fatal("a second Shared call started another member")
			}
			ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(10*time.Second))
			defer cancel()
			cli := c.Client(t)
			key := Prefix(t) + "k"
			if _, err := cli.Put(ctx, key, "v"); err != nil {
				t.Fatalf("put: %v", err)
			}
			if resp, err := cli.Get(ctx, key); err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("get = %v, %v", resp, err)
			}
		})
	}
	// The member outlives the subtests that used it; WithShared stops it.
	if _, err := first.Client(t).Get(context.Background(), "probe"); err != nil {
		t.Fatalf("shared member gone after its first users: %v", err)
	}
}
