package credential

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"sync"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Validate checks one credential, naming field in its errors, and
// normalises it in place (a _json_key password is compacted).
func Validate(field string, c *fleetv1.Credential) (Key, error) {
	key, err := ParseRegistry(c.GetRegistry())
	if err != nil {
		return Key{}, errdefs.Invalid(field+".registry", "%v", err)
	}
	if err := checkTLS(field, c); err != nil {
		return Key{}, err
	}
	switch kc := c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		if kc.Basic.GetUsername() == "" || kc.Basic.GetPassword() == "" {
			return Key{}, errdefs.Invalid(field+".basic", "username and password are both required")
		}
		if kc.Basic.GetUsername() == "_json_key" {
			var buf bytes.Buffer
			if err := json.Compact(&buf, []byte(kc.Basic.GetPassword())); err != nil {
				return Key{}, errdefs.Invalid(field+".basic.password", "with username _json_key the password is a service-account JSON key; it is not valid JSON: %v", err)
			}
			kc.Basic.Password = buf.String()
		}
	case *fleetv1.Credential_Ecr:
		e := kc.Ecr
		if _, ok := ECRRegion(e, key.Host); !ok {
			return Key{}, errdefs.Invalid(field+".ecr.region", "is required: %s is not an ECR host (<account>.dkr.ecr.<region>.amazonaws.com) to read the region from", key.Host)
		}
		// The region becomes part of the AWS endpoint's host name: nothing
		// but a region's letters, so it cannot point the signed request
		// elsewhere.
		if r := e.GetRegion(); r != "" && !awsRegion().MatchString(r) {
			return Key{}, errdefs.Invalid(field+".ecr.region", "%q is not an AWS region; write e.g. eu-west-1", r)
		}
		if (e.GetAccessKeyId() == "") != (e.GetSecretAccessKey() == "") {
			return Key{}, errdefs.Invalid(field+".ecr.secretAccessKey", "accessKeyId and secretAccessKey go together; send both, or neither to use the AWS SDK's default credential chain on the gateway")
		}
		if e.GetSessionToken() != "" && e.GetAccessKeyId() == "" {
			return Key{}, errdefs.Invalid(field+".ecr.sessionToken", "a session token needs accessKeyId and secretAccessKey")
		}
	case *fleetv1.Credential_EcrToken:
		if kc.EcrToken.GetPassword() == "" {
			return Key{}, errdefs.Invalid(field+".ecrToken.password", "is required: the output of aws ecr get-login-password")
		}
		if kc.EcrToken.GetExpiresAt() == nil {
			return Key{}, errdefs.Invalid(field+".ecrToken.expiresAt", "is required: when the token expires (12 hours after aws ecr get-login-password issued it)")
		}
	case *fleetv1.Credential_Anonymous:
	default:
		return Key{}, errdefs.Invalid(field, "needs one of basic, ecr, ecrToken or anonymous")
	}
	return key, nil
}

// checkTLS validates a credential's TLS material.
func checkTLS(field string, c *fleetv1.Credential) error {
	if c.GetInsecure() && c.GetRequireTls() {
		return errdefs.Invalid(field+".insecure", "contradicts requireTls; set one of them")
	}
	if ca := c.GetCaCertificate(); ca != "" {
		if _, err := parseCerts(ca); err != nil {
			return errdefs.Invalid(field+".caCertificate", "%v; send the CA certificate as PEM (-----BEGIN CERTIFICATE-----)", err)
		}
	}
	cert, key := c.GetClientCertificate(), c.GetClientKey()
	switch {
	case (cert == "") != (key == ""):
		return errdefs.Invalid(field+".clientCertificate", "clientCertificate and clientKey go together; send both or neither")
	case cert != "":
		if _, err := tls.X509KeyPair([]byte(cert), []byte(key)); err != nil {
			return errdefs.Invalid(field+".clientKey", "the client certificate and key are not a PEM pair that matches: %v", err)
		}
	}
	return nil
}

func parseCerts(p string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(p)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// KindOf names a credential's kind as births and summaries do.
func KindOf(c *fleetv1.Credential) string {
	switch c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		return "basic"
	case *fleetv1.Credential_Ecr:
		return "ecr"
	case *fleetv1.Credential_EcrToken:
		return "ecr-token"
	}
	return "anonymous"
}

// secretMaterial is what a fingerprint covers: the kind and its secret
// ("" for a credential without one).
func secretMaterial(c *fleetv1.Credential) string {
	switch kc := c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		return "basic\x00" + kc.Basic.GetUsername() + "\x00" + kc.Basic.GetPassword()
	case *fleetv1.Credential_Ecr:
		return "ecr\x00" + kc.Ecr.GetAccessKeyId() + "\x00" + kc.Ecr.GetSecretAccessKey() + "\x00" + kc.Ecr.GetRoleArn()
	case *fleetv1.Credential_EcrToken:
		return "ecr-token\x00" + kc.EcrToken.GetPassword()
	}
	return ""
}

// RandomFingerprint is 12 random hex digits: the fingerprint an agent
// gives a credential whose sender set none.
func RandomFingerprint() string {
	b := make([]byte, 6)
	rand.Read(b) // crypto/rand never fails on supported platforms
	return hex.EncodeToString(b)
}

// awsRegion is what an AWS region name may be (eu-west-1, us-gov-east-1,
// cn-north-1).
var awsRegion = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`) })
