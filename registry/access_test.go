package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/visorhq/visor/internal/embedetcd"
	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/testcerts"
	"github.com/visorhq/visor/internal/testtime"
)

// tlsConfig builds a client TLS config from a CA file and an optional
// client key pair.
func tlsConfig(t *testing.T, ca, cert, key string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		b, err := os.ReadFile(ca)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b)
		cfg.RootCAs = pool
	}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg
}

// TestDialTLSErrorsNameTheCause: against an etcd with client-certificate
// TLS, each way of getting TLS wrong is reported by its cause, not as
// "context deadline exceeded" alone (issue 14 row 10); so is an endpoint
// where nothing listens.
func TestDialTLSErrorsNameTheCause(t *testing.T) {
	certs := testcerts.New(t)
	c := etcdtest.NewWith(t, func(cfg *embedetcd.Config) {
		cfg.ClientURL = strings.Replace(cfg.ClientURL, "http://", "https://", 1)
		cfg.ClientCertFile, cfg.ClientKeyFile, cfg.ClientCAFile = certs.ServerCert, certs.ServerKey, certs.CA
	})
	ep := c.Endpoints()[0]
	hostport := strings.TrimPrefix(ep, "https://")
	// A member whose certificate is for another name.
	wrong := etcdtest.NewWith(t, func(cfg *embedetcd.Config) {
		cfg.ClientURL = strings.Replace(cfg.ClientURL, "http://", "https://", 1)
		cfg.ClientCertFile, cfg.ClientKeyFile, cfg.ClientCAFile = certs.WrongNameCert, certs.WrongNameKey, certs.CA
	})
	// An address where nothing listens (a member down, a typo'd port).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name      string
		endpoints []string
		tls       *tls.Config
		want      []string // substrings of the error; nil means success
		is        error
	}{
		{"right CA and client certificate", []string{ep}, tlsConfig(t, certs.CA, certs.ClientCert, certs.ClientKey), nil, nil},
		{"unknown CA", []string{ep}, tlsConfig(t, certs.OtherCA, certs.ClientCert, certs.ClientKey), []string{"unknown authority", hostport}, nil},
		{"wrong host name", wrong.Endpoints(), tlsConfig(t, certs.CA, certs.ClientCert, certs.ClientKey), []string{`not valid for the name "127.0.0.1"`}, nil},
		{"no client certificate", []string{ep}, tlsConfig(t, certs.CA, "", ""), []string{"refused the TLS handshake", "client certificate"}, nil},
		{"no TLS settings", []string{hostport}, nil, []string{"etcd serves TLS but no TLS settings were given"}, nil},
		{"nothing listens there", []string{closed}, nil, []string{"no endpoint accepts connections", closed, "connection refused"}, ErrUnreachable},
		{"one member down, one up", []string{"https://" + closed, ep}, tlsConfig(t, certs.CA, certs.ClientCert, certs.ClientKey), nil, nil},
		{"http:// endpoint with TLS settings", []string{strings.Replace(ep, "https://", "http://", 1)}, tlsConfig(t, certs.CA, certs.ClientCert, certs.ClientKey),
			[]string{"is http:// but TLS is configured"}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Dial(context.Background(), Config{Endpoints: tc.endpoints, TLS: tc.tls, DialTimeout: 2 * time.Second})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				r.Close()
				return
			}
			if err == nil {
				r.Close()
				t.Fatalf("Dial succeeded; want an error with %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Dial error %q does not say %q", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("Dial error %v is not %v", err, tc.is)
			}
		})
	}
}

// TestReadOnlyRoleIsPermissionError: a user whose role may only read the
// prefix can dial and read, and registering a host fails with
// ErrPermission (the agent stops on it instead of retrying "registry
// unreachable" forever; issue 14 row 10).
func TestReadOnlyRoleIsPermissionError(t *testing.T) {
	c := etcdtest.New(t)
	prefix := etcdtest.Prefix(t)
	root := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(time.Minute))
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(root.UserAdd(ctx, "root", "rootpw"))
	must(root.UserGrantRole(ctx, "root", "root"))
	must(root.RoleAdd(ctx, "reader"))
	must(root.RoleGrantPermission(ctx, "reader", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermRead)))
	must(root.UserAdd(ctx, "ro", "ropw"))
	must(root.UserGrantRole(ctx, "ro", "reader"))
	must(root.AuthEnable(ctx))
	t.Cleanup(func() {
		// Leave the shared member without auth for other tests.
		admin, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Username: "root", Password: "rootpw", DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err == nil {
			admin.AuthDisable(context.Background())
			admin.Close()
		}
	})

	// Authenticating costs the member a bcrypt hash, which on a loaded
	// machine took longer than 5 s (failed "context deadline exceeded"
	// once); a wrong password fails at once whatever the timeout.
	dialTimeout := testtime.Scaled(30 * time.Second)
	r, err := Dial(ctx, Config{Endpoints: c.Endpoints(), Prefix: prefix, Username: "ro", Password: "ropw", DialTimeout: dialTimeout})
	if err != nil {
		t.Fatalf("read-only user cannot dial: %v", err)
	}
	defer r.Close()
	if _, err := r.Hosts(ctx); err != nil {
		t.Fatalf("read-only user cannot list hosts: %v", err)
	}
	_, err = r.RegisterHost(ctx, Host{ID: "ro-host"}, 5*time.Second)
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "read and write access to the prefix") {
		t.Fatalf("RegisterHost as a read-only user = %v; want ErrPermission naming the prefix access", err)
	}

	_, err = Dial(ctx, Config{Endpoints: c.Endpoints(), Prefix: prefix, Username: "ro", Password: "wrong", DialTimeout: dialTimeout})
	if !errors.Is(err, ErrPermission) {
		t.Fatalf("Dial with a wrong password = %v; want ErrPermission", err)
	}
}
