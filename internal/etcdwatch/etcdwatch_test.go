package etcdwatch

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/testtime"
)

// TestResponsesStopsWithContext: the loop ends when ctx does, even though
// the watch channel stays open (as clientv3's does while disconnected).
func TestResponsesStopsWithContext(t *testing.T) {
	wch := make(chan clientv3.WatchResponse, 1)
	wch <- clientv3.WatchResponse{Header: &pb.ResponseHeader{Revision: 7}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		n := 0
		for wr := range Responses(ctx, wch) {
			n++
			if wr.Header.Revision != 7 {
				t.Errorf("revision %d, want 7", wr.Header.Revision)
			}
			cancel()
		}
		done <- n
	}()
	select {
	case n := <-done:
		if n != 1 {
			t.Errorf("got %d responses, want 1", n)
		}
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("Responses did not end with its context")
	}
}

// TestResponsesEndsWithChannel: a closed channel ends the loop.
func TestResponsesEndsWithChannel(t *testing.T) {
	wch := make(chan clientv3.WatchResponse)
	close(wch)
	for range Responses(context.Background(), wch) {
		t.Fatal("response from a closed channel")
	}
}
