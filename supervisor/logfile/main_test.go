package logfile

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as a workload instead of running tests.
const helperEnv = "VISOR_LOGFILE_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	goleak.VerifyTestMain(m)
}

// runHelper implements the helper workloads:
//
//	writer:N  writes lines "line %08d" for 0..N-1 to stdout, then exits.
func runHelper(mode string) int {
	var n int
	if _, err := fmt.Sscanf(mode, "writer:%d", &n); err != nil {
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		return 2
	}
	w := bufio.NewWriterSize(os.Stdout, 256) // small writes, like a chatty process
	for i := range n {
		w.WriteString("line ")
		w.WriteString(fmt.Sprintf("%08d", i))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return 1
	}
	return 0
}

// lineNumbers parses "line %08d" lines. A line that only ends with such a
// record (the head of another line was joined to it because bytes were lost
// in between) yields that record and counts as damaged; a line without a
// whole record only counts as damaged.
func lineNumbers(t *testing.T, data []byte) (nums []int, damaged int) {
	t.Helper()
	sc := bufio.NewScanner(bytesReader(data))
	for sc.Scan() {
		s := sc.Text()
		i := strings.LastIndex(s, "line ")
		if i < 0 || len(s)-i != 13 {
			damaged++
			continue
		}
		v, err := strconv.Atoi(s[i+5:])
		if err != nil {
			damaged++
			continue
		}
		if i > 0 {
			damaged++
		}
		nums = append(nums, v)
	}
	return nums, damaged
}
