package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
)

// Scope is a permission of an API principal (a token or a local user).
type Scope string

// Scopes of the agent API. Operator implies all the others.
const (
	// ScopeRead: status, instances, metrics, service lookups and watches.
	ScopeRead Scope = "read"
	// ScopeLogs: instance logs, which often carry secrets.
	ScopeLogs Scope = "logs"
	// ScopeRegister: register, renew and free external service
	// registrations (its own only); nothing else.
	ScopeRegister Scope = "register"
	// ScopeOperator: everything, including signals, pprof, and renewing
	// or freeing anyone's registration.
	ScopeOperator Scope = "operator"
)

func (s Scope) valid() bool {
	switch s {
	case ScopeRead, ScopeLogs, ScopeRegister, ScopeOperator:
		return true
	}
	return false
}

// ParseScopes parses a comma-separated scope list ("read,logs").
func ParseScopes(s string) ([]Scope, error) {
	var out []Scope
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !Scope(f).valid() {
			return nil, fmt.Errorf("scope %q is not one of read, logs, register, operator", f)
		}
		out = append(out, Scope(f))
	}
	return out, nil
}

// Token is one bearer token of the HTTP API. Only the SHA-256 of its
// secret is kept; a presented token is hashed and compared in constant
// time with every configured hash.
type Token struct {
	// Name is the principal: registrations made with the token belong to
	// it and count against its cap. Lower-case letters, digits, '.', '_'
	// and '-'.
	Name string `json:"name"`
	// Scopes granted; see Scope.
	Scopes []Scope `json:"scopes"`
	// SHA256 is the hex SHA-256 of the secret (`printf %s SECRET |
	// sha256sum`).
	SHA256 string `json:"sha256,omitempty"`
	// Secret, in a token file, is the secret itself; it is hashed on load
	// and never kept.
	Secret string `json:"token,omitempty"`
}

var tokenNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validate checks one configured token.
func (t Token) validate() error {
	if !tokenNameRe.MatchString(t.Name) {
		return fmt.Errorf("token name %q: want lower-case letters, digits, '.', '_', '-' (at most 63)", t.Name)
	}
	if len(t.Scopes) == 0 {
		return fmt.Errorf("token %q: no scopes", t.Name)
	}
	for _, s := range t.Scopes {
		if !s.valid() {
			return fmt.Errorf("token %q: scope %q is not one of read, logs, register, operator", t.Name, s)
		}
	}
	if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("token %q: sha256 must be 64 hex digits", t.Name)
	}
	return nil
}

// HashToken returns the hex SHA-256 of a token secret, as Token.SHA256
// holds it.
func HashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// tokenFile is the JSON of a token file.
type tokenFile struct {
	Tokens []Token `json:"tokens"`
}

// LoadTokenFile reads the tokens of the HTTP API from path:
//
//	{"tokens": [
//	  {"name": "ci", "scopes": ["read"], "sha256": "<hex sha-256 of the secret>"},
//	  {"name": "ops", "scopes": ["operator"], "token": "<the secret>"}
//	]}
//
// The file must be a regular file owned by root or by the agent's user and
// readable by its owner only (mode 0600 or 0400): a token file others can
// read or write is refused. Plain secrets are hashed on load.
func LoadTokenFile(path string) ([]Token, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("token file %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("token file %s: mode %04o lets others read or write it; chmod 600 it", path, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("token file %s: owned by uid %d, want root or the agent's user (uid %d)", path, st.Uid, os.Geteuid())
	}
	var tf tokenFile
	dec := json.NewDecoder(bufio.NewReader(f))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tf); err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	for i := range tf.Tokens {
		t := &tf.Tokens[i]
		if t.Secret != "" {
			if t.SHA256 != "" {
				return nil, fmt.Errorf("token file %s: token %q has both token and sha256", path, t.Name)
			}
			if len(t.Secret) < 16 {
				return nil, fmt.Errorf("token file %s: token %q is shorter than 16 characters", path, t.Name)
			}
			t.SHA256, t.Secret = HashToken(t.Secret), ""
		}
		t.SHA256 = strings.ToLower(t.SHA256)
	}
	return tf.Tokens, nil
}

// scopeSet is a set of scopes as bits.
type scopeSet uint8

const (
	bitRead scopeSet = 1 << iota
	bitLogs
	bitRegister
	bitOperator
)

func scopesOf(list []Scope) scopeSet {
	var s scopeSet
	for _, sc := range list {
		switch sc {
		case ScopeRead:
			s |= bitRead
		case ScopeLogs:
			s |= bitLogs
		case ScopeRegister:
			s |= bitRegister
		case ScopeOperator:
			s |= bitOperator
		}
	}
	return s
}

func (s scopeSet) has(need scopeSet) bool { return s&bitOperator != 0 || s&need == need }

// principal is who makes an API request.
type principal struct {
	name   string
	scopes scopeSet
}

type principalKey struct{}

// anonymousPrincipal is the operator a request without a token is under
// InsecureHTTP.
const anonymousPrincipal = "anonymous"

// authenticator maps credentials to principals.
type authenticator struct {
	tokens   []tokenEntry
	insecure bool // HTTP without a token is the operator "anonymous"
	owner    int  // the agent's euid: an operator on the socket
	group    int  // the socket's group
	groupSc  scopeSet
}

type tokenEntry struct {
	hash [sha256.Size]byte
	p    principal
}

func newAuthenticator(c Config) (*authenticator, error) {
	au := &authenticator{insecure: c.InsecureHTTP, owner: os.Geteuid(), group: os.Getegid(), groupSc: scopesOf(c.SocketGroupScopes)}
	if c.SocketGroup != "" {
		gid, err := lookupGroup(c.SocketGroup)
		if err != nil {
			return nil, err
		}
		au.group = gid
	}
	for _, t := range c.allTokens() {
		var e tokenEntry
		b, _ := hex.DecodeString(t.SHA256) // Validate checked it
		copy(e.hash[:], b)
		e.p = principal{name: t.Name, scopes: scopesOf(t.Scopes)}
		au.tokens = append(au.tokens, e)
	}
	return au, nil
}

// lookupGroup resolves a group name or number.
func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("socket_group: %w", err)
	}
	return strconv.Atoi(grp.Gid)
}

// token returns the principal of a presented bearer token. Every
// configured hash is compared, in constant time, so the answer's timing
// tells nothing about which (or whether one) matched.
func (au *authenticator) token(secret string) (principal, bool) {
	sum := sha256.Sum256([]byte(secret))
	var found principal
	ok := 0
	for _, e := range au.tokens {
		if subtle.ConstantTimeCompare(sum[:], e.hash[:]) == 1 {
			found, ok = e.p, 1
		}
	}
	return found, ok == 1
}

// peerCred is the credentials of a unix socket peer (SO_PEERCRED).
type peerCred struct {
	pid, uid, gid int
}

type peerCredKey struct{}

// inGroup reports whether the peer is a member of gid: its primary group,
// or a supplementary group of the process (from /proc/<pid>/status).
func inGroup(pc peerCred, gid int) bool {
	if pc.gid == gid {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pc.pid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, f := range strings.Fields(rest) {
				if n, err := strconv.Atoi(f); err == nil && n == gid {
					return true
				}
			}
		}
	}
	return false
}

// unixPrincipal maps the socket peer to a principal: root and the agent's
// own user are operators, members of the socket's group get its scopes,
// anyone else (who got through the file mode somehow) nothing.
func (au *authenticator) unixPrincipal(pc peerCred) (principal, error) {
	name := "uid:" + strconv.Itoa(pc.uid)
	switch {
	case pc.uid == 0 || pc.uid == au.owner:
		return principal{name: name, scopes: bitOperator}, nil
	case au.groupSc != 0 && inGroup(pc, au.group):
		return principal{name: name, scopes: au.groupSc}, nil
	}
	return principal{}, fmt.Errorf("uid %d is neither root, the agent's user, nor a member of the socket's group (gid %d)", pc.uid, au.group)
}

// authUnix authenticates requests on the unix socket by peer credentials.
func (a *Agent) authUnix(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pc, ok := r.Context().Value(peerCredKey{}).(peerCred)
		if !ok {
			writeError(w, http.StatusForbidden, "unix socket peer credentials unavailable")
			return
		}
		p, err := a.auth.unixPrincipal(pc)
		if err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		a.authorized(w, r, p, next)
	})
}

// authHTTP authenticates HTTP requests by bearer token. Without tokens
// configured the HTTP API serves only with Config.InsecureHTTP, and then
// a request without an Authorization header is the operator "anonymous";
// a request with a wrong token is always refused. /healthz is open.
// Unauthenticated requests are refused here, before any handler (and its
// limits) sees them.
func (a *Agent) authHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		h := r.Header.Get("Authorization")
		if strings.HasPrefix(r.URL.Path, "/ui/") {
			var done bool
			if h, done = a.uiCredentials(w, r, h, next); done {
				return
			}
		}
		if h == "" && a.auth.insecure {
			a.authorized(w, r, principal{name: anonymousPrincipal, scopes: bitOperator}, next)
			return
		}
		secret, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || secret == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="visor"`)
			writeError(w, http.StatusUnauthorized, "this API needs \"Authorization: Bearer <token>\"")
			return
		}
		p, ok := a.auth.token(secret)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="visor", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "unknown bearer token")
			return
		}
		a.authorized(w, r, p, next)
	})
}

// authorized serves r for p if p holds the scope the route needs.
func (a *Agent) authorized(w http.ResponseWriter, r *http.Request, p principal, next http.Handler) {
	need, what := scopeFor(r)
	if need != 0 && !p.scopes.has(need) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("%s needs scope %q; %s does not have it", what, scopeName(need), p.name))
		return
	}
	ctx := context.WithValue(r.Context(), principalKey{}, p)
	ctx = discovery.WithCaller(ctx, discovery.Caller{Name: p.name, Admin: p.scopes&bitOperator != 0})
	next.ServeHTTP(w, r.WithContext(ctx))
}

func scopeName(s scopeSet) Scope {
	switch s {
	case bitRead:
		return ScopeRead
	case bitLogs:
		return ScopeLogs
	case bitRegister:
		return ScopeRegister
	}
	return ScopeOperator
}

// scopeFor names the scope a request needs, by route:
//
//	GET /healthz                                  none
//	GET /v1/status, /v1/instances[/{id}], /metrics read
//	GET /v1/services[/...] (lookup, watch)        read
//	GET /v1/apps/{app}/deployment[s]              read
//	GET /v1/instances/{id}/logs                   logs
//	POST, PUT, DELETE /v1/services/...            register
//	GET /ui/..., but its logs                     read (uiScope)
//	GET /ui/instances/{id}/logs                   logs
//	/ui/login, /ui/assets/...                     none
//	everything else (signal, deployment actions and rollback,
//	pprof, unknown, POST /ui/...)                 operator
func scopeFor(r *http.Request) (scopeSet, string) {
	p := r.URL.Path
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case p == "/healthz":
		return 0, "health"
	case p == "/v1/services" || strings.HasPrefix(p, "/v1/services/"):
		if get {
			return bitRead, "service lookup"
		}
		return bitRegister, "service registration"
	case strings.HasPrefix(p, "/v1/instances/") && strings.HasSuffix(p, "/logs"):
		if get {
			return bitLogs, "reading logs"
		}
	case get && (p == "/v1/status" || p == "/metrics" || p == "/v1/instances" ||
		strings.HasPrefix(p, "/v1/instances/") && strings.Count(p, "/") == 3):
		return bitRead, "reading status"
	case get && strings.HasPrefix(p, "/v1/apps/") && strings.Count(p, "/") == 4 &&
		(strings.HasSuffix(p, "/deployment") || strings.HasSuffix(p, "/deployments")):
		return bitRead, "reading deployments"
	case strings.HasPrefix(p, "/v1/apps/") && (strings.Contains(p, "/deployment/") || strings.HasSuffix(p, "/rollback")):
		return bitOperator, "changing a deployment"
	case strings.HasPrefix(p, "/v1/instances/") && strings.HasSuffix(p, "/signal"):
		return bitOperator, "signalling an instance"
	case strings.HasPrefix(p, "/ui/"):
		return uiScope(r)
	}
	return bitOperator, r.Method + " " + p
}

// reservedService refuses an external registration of a name that
// belongs to a Visor app: "<app>" or "<app>.<anything>" for an app in the
// registry (its instances register as "<app>.<proc>").
func (a *Agent) reservedService(ctx context.Context, name string) error {
	app, _, _ := strings.Cut(name, ".")
	_, err := a.reg.App(ctx, app)
	switch {
	case err == nil, errors.Is(err, registry.ErrCorrupt):
		return fmt.Errorf("%w: %q belongs to app %q, whose instances register themselves", discovery.ErrReserved, name, app)
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalid):
		return nil
	}
	return fmt.Errorf("check service name %q against the apps: %w", name, err)
}

// checkRunDir refuses a socket directory that others may write to: they
// could replace the socket with their own.
func checkRunDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("agent: run_dir: %w", err)
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("agent: run_dir %s: mode %04o lets anyone replace the socket; chmod o-w it", dir, fi.Mode().Perm())
	}
	return nil
}

// secureSocket gives the socket to uid:gid with mode 0660 and checks that
// it took: a socket others can connect to would give them the local API.
func secureSocket(sock string, uid, gid int) error {
	if err := os.Chmod(sock, 0o660); err != nil {
		return fmt.Errorf("agent: chmod socket: %w", err)
	}
	if err := os.Lchown(sock, uid, gid); err != nil {
		return fmt.Errorf("agent: socket group %d: %w (the agent must be root or a member of that group)", gid, err)
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		return fmt.Errorf("agent: socket: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || (ok && (int(st.Uid) != uid || int(st.Gid) != gid)) {
		return fmt.Errorf("agent: socket %s is %04o %d:%d, want 0660 %d:%d", sock, fi.Mode().Perm(), st.Uid, st.Gid, uid, gid)
	}
	return nil
}
