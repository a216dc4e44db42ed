// Package testcerts writes a throw-away certificate authority and
// certificates signed by it for tests of TLS connections (etcd with client
// certificates, an agent serving HTTPS). Only tests import it.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Files are the PEM files New wrote.
type Files struct {
	// CA is the authority's certificate; CAKey its private key (for
	// Client).
	CA, CAKey string
	// ServerCert and ServerKey are valid for 127.0.0.1, ::1, localhost and
	// the addresses given to NewFor.
	ServerCert, ServerKey string
	// ClientCert and ClientKey are a client certificate (CN "visor-test").
	ClientCert, ClientKey string
	// WrongNameCert and WrongNameKey are a server certificate of the same
	// authority for "wrong.example" only.
	WrongNameCert, WrongNameKey string
	// OtherCA is an unrelated authority's certificate.
	OtherCA string
}

// New writes a CA, a server, a client and a wrong-name certificate into a
// temporary directory of t.
func New(t testing.TB) Files {
	t.Helper()
	return NewFor(t)
}

// NewFor is New with a server certificate also valid for the addresses ips
// (a test network's etcd members, say).
func NewFor(t testing.TB, ips ...net.IP) Files {
	t.Helper()
	dir := t.TempDir()
	caKey, caCert := authority(t, "visor test CA")
	_, otherCert := authority(t, "other CA")
	kb, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		t.Fatal(err)
	}
	f := Files{
		CA:            writePEM(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw),
		CAKey:         writePEM(t, dir, "ca-key.pem", "EC PRIVATE KEY", kb),
		OtherCA:       writePEM(t, dir, "other-ca.pem", "CERTIFICATE", otherCert.Raw),
		ServerCert:    filepath.Join(dir, "server.pem"),
		ServerKey:     filepath.Join(dir, "server-key.pem"),
		ClientCert:    filepath.Join(dir, "client.pem"),
		ClientKey:     filepath.Join(dir, "client-key.pem"),
		WrongNameCert: filepath.Join(dir, "wrong.pem"),
		WrongNameKey:  filepath.Join(dir, "wrong-key.pem"),
	}
	leaf(t, caKey, caCert, f.ServerCert, f.ServerKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, ips...),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	leaf(t, caKey, caCert, f.ClientCert, f.ClientKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "visor-test"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	leaf(t, caKey, caCert, f.WrongNameCert, f.WrongNameKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "wrong.example"},
		DNSNames:    []string{"wrong.example"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return f
}

// Client writes a client certificate of f's authority with common name
// cn (etcd takes a client's user from it when it authenticates by
// certificate) next to f's files and returns the certificate's and the
// key's paths.
func (f Files) Client(t testing.TB, cn string) (certPath, keyPath string) {
	t.Helper()
	caKey, ca := f.load(t)
	dir := filepath.Dir(f.CA)
	name := "client-" + strings.Map(func(r rune) rune {
		if r == '/' || r == os.PathSeparator {
			return '_'
		}
		return r
	}, cn)
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	leaf(t, caKey, ca, certPath, keyPath, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return certPath, keyPath
}

// load reads f's authority back from its files.
func (f Files) load(t testing.TB) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	block := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := pem.Decode(b)
		if p == nil {
			t.Fatalf("%s: no PEM block", path)
		}
		return p.Bytes
	}
	ca, err := x509.ParseCertificate(block(f.CA))
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(block(f.CAKey))
	if err != nil {
		t.Fatal(err)
	}
	return key, ca
}

// serial numbers certificates uniquely within the process.
var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(time.Now().UnixNano() + serial.Add(1)) }

func authority(t testing.TB, name string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func leaf(t testing.TB, caKey *ecdsa.PrivateKey, ca *x509.Certificate, certPath, keyPath string, tmpl *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = nextSerial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Dir(certPath), filepath.Base(certPath), "CERTIFICATE", der)
	writePEM(t, filepath.Dir(keyPath), filepath.Base(keyPath), "EC PRIVATE KEY", kb)
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
