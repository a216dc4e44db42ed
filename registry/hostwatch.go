package registry

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/etcdwatch"
)

// WatchHosts sends the set of live hosts (sorted by id, Draining not
// filled in): first as listed, then again after every change of a host
// record (a join, a leave, a status update), until ctx ends; the channel
// is then closed. The watch starts at the list's revision, so no change
// falls between the two; after a watch error or a compaction it lists
// again. Host records that do not decode are left out. The channel holds
// one set: a slow reader skips intermediate sets, never the latest.
func (r *Registry) WatchHosts(ctx context.Context) <-chan []Host {
	ch := make(chan []Host, 1)
	go func() {
		defer close(ch)
		for attempt := 0; ctx.Err() == nil; attempt++ {
			hosts, rev, err := r.listHosts(ctx)
			if err != nil {
				r.log.Debug("list hosts", "error", err)
				// 100 ms, doubling, at most 5 s between tries.
				t := time.NewTimer(min(100*time.Millisecond<<min(attempt, 6), 5*time.Second))
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
				continue
			}
			attempt = -1
			if !sendLatest(ctx, ch, hosts) {
				return
			}
			r.followHosts(ctx, ch, hosts, rev)
		}
	}()
	return ch
}

// listHosts reads the host records and the revision they were read at.
func (r *Registry) listHosts(ctx context.Context) (map[string]Host, int64, error) {
	resp, err := r.cli.Get(ctx, r.hostsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	hosts := map[string]Host{}
	for _, kv := range resp.Kvs {
		if h, ok := r.hostFromKV(kv); ok {
			hosts[h.ID] = h
		}
	}
	return hosts, resp.Header.Revision, nil
}

// hostFromKV decodes a host record; ok is false for the host instance
// index entries under hosts/<host>/ and for records that do not decode.
func (r *Registry) hostFromKV(kv *mvccpb.KeyValue) (Host, bool) {
	id := strings.TrimPrefix(string(kv.Key), r.hostsDir())
	if strings.Contains(id, "/") {
		return Host{}, false
	}
	h, err := decodeHost(kv, id)
	if err != nil {
		r.log.Warn("skipping undecodable host record", "key", string(kv.Key), "error", err)
		return Host{}, false
	}
	return h, true
}

// followHosts applies host key changes after rev to hosts and sends each
// new set, until ctx ends or the watch fails.
func (r *Registry) followHosts(ctx context.Context, ch chan []Host, hosts map[string]Host, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := r.cli.Watch(wctx, r.hostsDir(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for wr := range etcdwatch.Responses(ctx, wch) {
		if err := wr.Err(); err != nil {
			if !errors.Is(err, context.Canceled) {
				r.log.Debug("host watch ended; listing again", "error", err)
			}
			return
		}
		changed := false
		for _, ev := range wr.Events {
			id := strings.TrimPrefix(string(ev.Kv.Key), r.hostsDir())
			if strings.Contains(id, "/") {
				continue // an instance index entry
			}
			changed = true
			if ev.Type == clientv3.EventTypeDelete {
				delete(hosts, id)
			} else if h, ok := r.hostFromKV(ev.Kv); ok {
				hosts[id] = h
			}
		}
		if changed && !sendLatest(ctx, ch, hosts) {
			return
		}
	}
}

// sendLatest replaces whatever set ch holds with a sorted copy of hosts;
// false once ctx ended.
func sendLatest(ctx context.Context, ch chan []Host, hosts map[string]Host) bool {
	out := make([]Host, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	for {
		select {
		case ch <- out:
			return true
		case <-ctx.Done():
			return false
		default:
		}
		select {
		case <-ch: // drop the stale set nobody read yet
		default:
		}
	}
}
