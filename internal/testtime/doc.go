// Package testtime holds the one factor by which every deadline in Visor's
// tests is scaled, so the suite holds on a fast idle machine and on a slow,
// loaded one alike.
//
// A test never assumes that one thing finishes before a timer fires: it waits
// for the event itself, with a deadline of testtime.Scaled(d). Set
// VISOR_TEST_TIMEOUT_SCALE (a positive number, default 1) to stretch every
// such deadline on a slow machine, e.g. VISOR_TEST_TIMEOUT_SCALE=3 make test.
//
// Only tests (and test harnesses under internal/) import this package.
package testtime
