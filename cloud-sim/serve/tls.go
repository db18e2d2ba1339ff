package serve

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
)

// brokerTLS adds the embedded broker's TLS listener to bcfg when
// cfg asks for one.
func brokerTLS(cfg Config, bcfg *broker.Config) error {
	if cfg.MQTTTLSCert == "" && cfg.MQTTTLSKey == "" {
		if cfg.MQTTTLSListen != "" {
			return errors.New("serve: --mqtts-listen needs --mqtt-tls-cert and --mqtt-tls-key")
		}
		return nil
	}
	if cfg.MQTTTLSCert == "" || cfg.MQTTTLSKey == "" {
		return errors.New("serve: --mqtt-tls-cert and --mqtt-tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(cfg.MQTTTLSCert, cfg.MQTTTLSKey)
	if err != nil {
		return fmt.Errorf("serve: --mqtt-tls-cert/--mqtt-tls-key: %w", err)
	}
	bcfg.TLSAddr = cfg.MQTTTLSListen
	if bcfg.TLSAddr == "" {
		bcfg.TLSAddr = "127.0.0.1:8883"
	}
	bcfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	return nil
}

// controllerTLS is the controller's TLS configuration for an mqtts://
// external broker: nil (system roots, no client certificate) unless
// --broker-ca or --broker-cert is set.
func controllerTLS(cfg Config) (*tls.Config, error) {
	if cfg.BrokerCA == "" && cfg.BrokerCert == "" && cfg.BrokerKey == "" {
		return nil, nil
	}
	switch u, err := url.Parse(cfg.BrokerURL); {
	case err == nil && (u.Scheme == "mqtts" || u.Scheme == "tls" || u.Scheme == "ssl"):
	default:
		return nil, fmt.Errorf("serve: --broker-ca/--broker-cert need --broker mqtts://host:8883, not %q", cfg.BrokerURL)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.BrokerCA != "" {
		pem, err := os.ReadFile(cfg.BrokerCA)
		if err != nil {
			return nil, fmt.Errorf("serve: --broker-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("serve: --broker-ca %s: no PEM certificate in the file", cfg.BrokerCA)
		}
	}
	if cfg.BrokerCert != "" || cfg.BrokerKey != "" {
		if cfg.BrokerCert == "" || cfg.BrokerKey == "" {
			return nil, errors.New("serve: --broker-cert and --broker-key go together")
		}
		cert, err := tls.LoadX509KeyPair(cfg.BrokerCert, cfg.BrokerKey)
		if err != nil {
			return nil, fmt.Errorf("serve: --broker-cert/--broker-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
