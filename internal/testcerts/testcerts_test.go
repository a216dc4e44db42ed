package testcerts

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
)

// TestClientHasTheCommonNameAndVerifies: a certificate from Client carries
// the common name asked for (etcd's user when it authenticates by
// certificate) and verifies against the authority's CA for client auth.
func TestClientHasTheCommonNameAndVerifies(t *testing.T) {
	f := New(t)
	certPath, keyPath := f.Client(t, "visor")
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "visor" {
		t.Errorf("common name %q, want visor", cert.Subject.CommonName)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify against the CA: %v", err)
	}
	other, _ := f.Client(t, "root")
	if other == certPath {
		t.Errorf("two common names wrote the same file %s", other)
	}
}
