// Package deptest holds the tests that keep Visor's shape: which packages
// may depend on which (DESIGN.md, "Packages and the direction of
// dependencies"), and how large a non-test function or file may grow
// before it is split by idea (80 and 600 lines). It has no code of its own.
package deptest
