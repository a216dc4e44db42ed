package etcdwatch

import (
	"context"
	"iter"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Responses yields the responses of wch until it closes or ctx ends.
//
// A range over a clientv3 watch channel alone is not enough: the client
// closes a cancelled watch's channel only once its gRPC stream is up
// again, so after a network partition the loop (and whoever waits for it,
// like an agent about to register again) hangs until the connection's
// backoff lets it reconnect; test/fault measured 16 s. ctx should be the
// watch's own context or one that ends with it.
func Responses(ctx context.Context, wch clientv3.WatchChan) iter.Seq[clientv3.WatchResponse] {
	return func(yield func(clientv3.WatchResponse) bool) {
		for {
			select {
			case <-ctx.Done():
				return
			case wr, ok := <-wch:
				if !ok || !yield(wr) {
					return
				}
			}
		}
	}
}
