package discovery

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// BadEndpoint is a stored endpoint record that does not decode or fails
// validation (written into etcd by hand or by a broken client). Lookups,
// DNS and watches skip it.
type BadEndpoint struct {
	// Key is the full etcd key.
	Key string
	// Err says what is wrong with it.
	Err error
}

// checkPage is how many keys Check reads per request.
const checkPage = 500

// Check reads every endpoint record, at one revision, and returns those
// that do not decode or fail validation, in key order (visor doctor).
func (s *Store) Check(ctx context.Context) ([]BadEndpoint, error) {
	var bad []BadEndpoint
	from, end := s.root(), clientv3.GetPrefixRangeEnd(s.root())
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(checkPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, fmt.Errorf("check endpoints: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if _, err := s.decode(kv); err != nil {
				bad = append(bad, BadEndpoint{Key: string(kv.Key), Err: err})
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return bad, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
