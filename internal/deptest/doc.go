// Package deptest holds the test that keeps Visor's package boundaries:
// which packages may depend on which (DESIGN.md, "Packages and the
// direction of dependencies"). It has no code of its own.
package deptest
