package testtime

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// EnvVar names the environment variable holding the scale factor.
const EnvVar = "VISOR_TEST_TIMEOUT_SCALE"

var (
	scaleOnce sync.Once
	scale     float64
	scaleErr  error
)

// Scale returns the factor from EnvVar: 1 when unset. It panics on a value
// that is not a positive number, since every deadline of the run would be
// wrong.
func Scale() float64 {
	scaleOnce.Do(func() { scale, scaleErr = parse(os.Getenv(EnvVar)) })
	if scaleErr != nil {
		panic(scaleErr)
	}
	return scale
}

func parse(v string) (float64, error) {
	if v == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f > 1000 {
		return 0, fmt.Errorf("%s=%q: want a positive number up to 1000", EnvVar, v)
	}
	return f, nil
}

// Scaled returns d multiplied by Scale.
func Scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) * Scale())
}
