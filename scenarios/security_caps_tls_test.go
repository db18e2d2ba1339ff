package scenarios

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// testCA is a certificate authority made by the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate, PEM
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, file: filepath.Join(t.TempDir(), name+".pem"), pool: x509.NewCertPool()}
	ca.pool.AddCert(cert)
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// serverCert issues a certificate for 127.0.0.1 and returns its
// certificate and key files.
func (ca *testCA) serverCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "broker.pem"), filepath.Join(dir, "broker-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCapsTLS: the embedded broker serves mqtts:// with a certificate of
// a CA the test makes. A real fleet-agent given that CA (--broker-ca)
// connects over TLS, announces itself and runs a command; a client that
// trusts another CA fails verification; a second controller reaches the
// broker over mqtts:// with --broker-ca, and fails without it.
func TestCapsTLS(t *testing.T) {
	ca, other := newTestCA(t, "fleet-ca"), newTestCA(t, "other-ca")
	certFile, keyFile := ca.serverCert(t)
	tlsAddr := testenv.FreeAddr(t)
	c, _ := capsCloud(t, func(cfg *serve.Config) {
		cfg.MQTTTLSListen, cfg.MQTTTLSCert, cfg.MQTTTLSKey = tlsAddr, certFile, keyFile
	})
	tlsAddr = c.cfg.MQTTTLSListen // another when the one chosen was taken
	if got := c.Broker.TLSURL(); got != "mqtts://"+tlsAddr {
		t.Fatalf("TLS URL %q, want mqtts://%s", got, tlsAddr)
	}

	t.Run("verification", func(t *testing.T) {
		tests := []struct {
			name    string
			roots   *x509.CertPool
			wantErr bool
		}{
			{"the broker's CA", ca.pool, false},
			{"another CA", other.pool, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: tt.roots, ServerName: "127.0.0.1"})
				var unknown x509.UnknownAuthorityError
				switch {
				case tt.wantErr && !errors.As(err, &unknown):
					t.Fatalf("handshake with %s: %v, want x509.UnknownAuthorityError", tt.name, err)
				case !tt.wantErr && err != nil:
					t.Fatalf("handshake with %s: %v", tt.name, err)
				}
				if conn != nil {
					conn.Close()
				}
			})
		}
	})

	t.Run("agent", func(t *testing.T) {
		creds := func(id string) []string {
			var p api.Provisioned
			if err := c.api.Do(context.Background(), "POST", "/v1/gateways/acme/"+id+"/provision", api.ProvisionRequest{}, &p, nil); err != nil {
				t.Fatal(err)
			}
			pwFile := filepath.Join(t.TempDir(), "password")
			if err := os.WriteFile(pwFile, []byte(p.Password), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{"--broker-username", p.Username, "--broker-password-file", pwFile}
		}
		wrong := testenv.StartAgent(t, "mqtts://"+tlsAddr, "acme", "gw-wrong", append(creds("gw-wrong"), "--broker-ca", other.file)...)
		testenv.StartAgent(t, "mqtts://"+tlsAddr, "acme", "gw-tls", append(creds("gw-tls"), "--broker-ca", ca.file)...)
		testenv.Eventually(t, "gw-tls online over mqtts://", func() bool {
			g := c.gateway(t, "acme", "gw-tls")
			return g != nil && g.Online
		})
		b := c.send(t, api.Target{Tenant: "acme", Gateways: []string{"gw-tls"}}, rebirthCmd(), "20s")
		if !b.Done || b.Counts[api.StateSucceeded] != 1 {
			t.Fatalf("rebirth over mqtts://: %+v", b.Counts)
		}
		testenv.Eventually(t, "the agent trusting another CA refuses the broker's certificate", func() bool {
			return strings.Contains(wrong.Logs(), "certificate signed by unknown authority")
		})
		if g := c.gateway(t, "acme", "gw-wrong"); g != nil {
			t.Errorf("gw-wrong is known to the controller: %+v", g)
		}
	})

	t.Run("controller", func(t *testing.T) {
		replica := func(ca string) serve.Config {
			return serve.Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Scheme: c.cfg.Scheme,
				BrokerURL: "mqtts://" + tlsAddr, BrokerUsername: "controller", BrokerPassword: c.ControllerPassword, BrokerCA: ca, ControllerID: "replica-b"}
		}
		s, err := serve.Start(context.Background(), replica(ca.file))
		if err != nil {
			t.Fatalf("controller over mqtts:// with --broker-ca: %v", err)
		}
		defer s.Close()
		testenv.Eventually(t, "the replica sees gw-tls's retained birth", func() bool {
			_, ok := s.Controller.Gateway("acme", "gw-tls")
			return ok
		})
		// Trusting another CA, the controller never connects: Start gives
		// up when ctx ends.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if s, err := serve.Start(ctx, replica(other.file)); err == nil {
			s.Close()
			t.Fatal("a controller trusting another CA connected")
		}
	})
}
