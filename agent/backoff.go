package agent

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is a small exponential retry delay for reconnecting.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) reset() { b.cur = b.min }

// wait sleeps the current delay (with jitter) or until ctx ends; it reports
// whether ctx is still live.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.cur/2 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
	b.cur *= 2
	if b.cur > b.max {
		b.cur = b.max
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
