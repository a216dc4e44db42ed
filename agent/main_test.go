package agent

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/visorhq/visor/internal/proctest"
)

func TestMain(m *testing.M) {
	proctest.Main()
	authClientMain() // exits when this process is an auth test's client
	goleak.VerifyTestMain(m,
		// etcd's client and embedded server keep a few process-wide goroutines.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreAnyFunction("github.com/prometheus/procfs.(*FS).Stat"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
	os.Exit(0)
}
