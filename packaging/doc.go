// Package packaging holds no Go code: it is the home of the package
// build configuration (nfpm.yaml for .deb and .rpm, built by `make
// package`), the maintainer scripts, the default agent configuration and its
// documented example, and the test that builds the .deb and installs,
// checks, removes and purges it on the machine running the tests (as root).
//
// Forbidden imports: nothing here is imported by other packages, and its
// test imports no Visor package; it exercises the built binary.
package packaging
