package discovery

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
)

// Errors callers branch on with errors.Is. Returned errors wrap them with
// the offending field and value.
var (
	// ErrInvalid marks malformed input: names, versions, ranges, ports,
	// addresses, metadata, TTLs.
	ErrInvalid = errors.New("discovery: invalid input")
	// ErrTooLarge marks input over a documented size limit (metadata, body).
	ErrTooLarge = errors.New("discovery: too large")
	// ErrUnknown marks a registration id the Registrar does not hold.
	ErrUnknown = errors.New("discovery: unknown registration")
	// ErrLimit marks a client that already holds its cap of registrations
	// (or of watch streams).
	ErrLimit = errors.New("discovery: per-client cap reached")
	// ErrForbidden marks a change to a registration another client made.
	ErrForbidden = errors.New("discovery: forbidden")
	// ErrReserved marks a service name that may not be registered
	// externally (it belongs to a Visor app).
	ErrReserved = errors.New("discovery: reserved service name")
	// ErrCompacted marks a watch whose start revision etcd has compacted
	// away; the watcher must look up afresh and watch from there.
	ErrCompacted = errors.New("discovery: watch revision compacted")
)

// Sources of an Endpoint.
const (
	// SourceInstance is an instance Visor runs, registered by its agent.
	SourceInstance = "instance"
	// SourceExternal is a process registered through the HTTP API.
	SourceExternal = "external"
)

// Limits on stored fields.
const (
	maxNameLen    = 127
	maxIDLen      = 128
	maxVersionLen = 64
	maxAddrLen    = 253
	maxMetaKeyLen = 64
	// maxValueBytes bounds one stored endpoint; the Registrar's metadata cap
	// is far below it.
	maxValueBytes = 64 << 10
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)
	idRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+_-]*$`)
	metaKeyRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	// hostnameRE is an RFC 1123 host name, labels of up to 63 characters.
	hostnameRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$`)
)

// Endpoint is one address of a service.
type Endpoint struct {
	// Service is "<app>.<proc>" for instances, or an external name.
	Service string `json:"service"`
	// Version is the instance's revision or the registered version; it
	// may be empty (unversioned).
	Version string `json:"version,omitempty"`
	// ID is the instance id, or the id the Registrar assigned.
	ID string `json:"id"`
	// Host is the Visor host the endpoint runs on or registered through.
	Host string `json:"host,omitempty"`
	// Addr is the IP address or host name clients connect to.
	Addr string `json:"addr"`
	// Port is the TCP/UDP port; 0 for an instance without one.
	Port int `json:"port"`
	// Meta is free-form metadata.
	Meta map[string]string `json:"meta,omitempty"`
	// Healthy reports whether the endpoint passes its checks; DNS and
	// healthy-only lookups skip unhealthy endpoints.
	Healthy bool `json:"healthy"`
	// Source is SourceInstance or SourceExternal.
	Source string `json:"source"`
	// Registered is when the endpoint was first registered.
	Registered time.Time `json:"registered"`
	// Expires is when an external registration lapses unless renewed. It is
	// set only in answers of the Registrar holding the registration, never
	// stored: renewals cost no etcd write.
	Expires time.Time `json:"expires,omitzero"`
	// ModRevision is the etcd revision of the last change (not stored).
	ModRevision int64 `json:"mod_revision,omitempty"`
}

// ServiceName is the service of an app's process type: "<app>.<proc>".
func ServiceName(app, proc string) string { return app + "." + proc }

// InstanceEndpoint builds the endpoint the agent registers for a running
// instance: service "<app>.<proc>", version rev, bound by the caller to
// the host's lease with Store.Put.
func InstanceEndpoint(app, rev, proc, id, host, addr string, port int, healthy bool) Endpoint {
	return Endpoint{
		Service: ServiceName(app, proc), Version: rev, ID: id, Host: host,
		Addr: addr, Port: port, Healthy: healthy, Source: SourceInstance,
	}
}

// ValidateName checks a service name: lower-case letters, digits, '.' and
// '-', starting with a letter or digit, at most 127 characters.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > maxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("%w: service name %q: want [a-z0-9][a-z0-9.-]*, at most %d characters", ErrInvalid, name, maxNameLen)
	}
	return nil
}

func validateID(id string) error {
	if len(id) == 0 || len(id) > maxIDLen || !idRE.MatchString(id) {
		return fmt.Errorf("%w: endpoint id %q: want [A-Za-z0-9][A-Za-z0-9._-]*, at most %d characters", ErrInvalid, id, maxIDLen)
	}
	return nil
}

// ValidateVersion checks a registered version: empty, or letters, digits
// and ".+_-", starting with a letter or digit, at most 64 characters.
func ValidateVersion(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > maxVersionLen || !versionRE.MatchString(v) {
		return fmt.Errorf("%w: version %q: want [A-Za-z0-9][A-Za-z0-9.+_-]*, at most %d characters", ErrInvalid, v, maxVersionLen)
	}
	return nil
}

// validateAddr accepts an IP address or an RFC 1123 host name.
func validateAddr(addr string) error {
	if net.ParseIP(addr) != nil {
		return nil
	}
	if len(addr) == 0 || len(addr) > maxAddrLen || !hostnameRE.MatchString(addr) {
		return fmt.Errorf("%w: address %q: want an IP address or host name", ErrInvalid, addr)
	}
	return nil
}

// metaSize is the size metadata counts against a cap: keys plus values.
func metaSize(m map[string]string) int {
	n := 0
	for k, v := range m {
		n += len(k) + len(v)
	}
	return n
}

func validateMeta(m map[string]string, maxBytes int) error {
	for k := range m {
		if len(k) > maxMetaKeyLen || !metaKeyRE.MatchString(k) {
			return fmt.Errorf("%w: metadata key %q: want [A-Za-z0-9_.-]+, at most %d characters", ErrInvalid, k, maxMetaKeyLen)
		}
	}
	if n := metaSize(m); maxBytes > 0 && n > maxBytes {
		return fmt.Errorf("%w: metadata is %d bytes, the limit is %d", ErrTooLarge, n, maxBytes)
	}
	return nil
}

// validate checks an endpoint before it is stored.
func (e *Endpoint) validate() error {
	if err := ValidateName(e.Service); err != nil {
		return err
	}
	if err := validateID(e.ID); err != nil {
		return err
	}
	if err := ValidateVersion(e.Version); err != nil {
		return err
	}
	if err := validateAddr(e.Addr); err != nil {
		return err
	}
	if e.Port < 0 || e.Port > 65535 {
		return fmt.Errorf("%w: port %d out of range 0-65535", ErrInvalid, e.Port)
	}
	if e.Host != "" && !nameRE.MatchString(e.Host) {
		return fmt.Errorf("%w: host %q", ErrInvalid, e.Host)
	}
	switch e.Source {
	case SourceInstance, SourceExternal:
	default:
		return fmt.Errorf("%w: source %q: want %q or %q", ErrInvalid, e.Source, SourceInstance, SourceExternal)
	}
	return validateMeta(e.Meta, 0)
}

// VersionMatcher decides whether endpoint versions satisfy a lookup's
// version or range. The zero value matches every version.
type VersionMatcher struct {
	raw string
	c   *semver.Constraints
}

// rangeChars are characters that only appear in ranges, never in versions.
const rangeChars = "^~<>=!*| ,"

// ParseVersionQuery parses a lookup's version or range ("" = any). A query
// that is a plain version token matches exactly, and also as a semver
// constraint when it parses as one; a query with range operators must
// parse as a semver range or it is ErrInvalid.
func ParseVersionQuery(q string) (VersionMatcher, error) {
	if q == "" {
		return VersionMatcher{}, nil
	}
	if len(q) > 256 {
		return VersionMatcher{}, fmt.Errorf("%w: version range is %d characters, the limit is 256", ErrInvalid, len(q))
	}
	c, err := semver.NewConstraint(q)
	if strings.ContainsAny(q, rangeChars) {
		if err != nil {
			return VersionMatcher{}, fmt.Errorf("%w: version range %q: %w", ErrInvalid, q, err)
		}
		return VersionMatcher{raw: q, c: c}, nil
	}
	if err := ValidateVersion(q); err != nil {
		return VersionMatcher{}, err
	}
	if err != nil {
		c = nil // not semver: exact match only
	}
	return VersionMatcher{raw: q, c: c}, nil
}

// String returns the query the matcher was parsed from.
func (m VersionMatcher) String() string { return m.raw }

// Match reports whether version satisfies the query.
func (m VersionMatcher) Match(version string) bool {
	if m.raw == "" || version == m.raw {
		return true
	}
	if m.c == nil || version == "" {
		return false
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return false
	}
	return m.c.Check(v)
}

// SplitNameVersion splits "name@version-or-range" into its parts; the
// version part is "" when there is no '@'.
func SplitNameVersion(s string) (name, version string) {
	name, version, _ = strings.Cut(s, "@")
	return name, version
}
