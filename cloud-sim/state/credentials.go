package state

import "time"

// Credential is a tenant's registry credential (bucket Credentials), its
// secret and issued token encrypted.
type Credential struct {
	CredentialView
	Secret []byte `json:"secret"`
	// Token is the ECR token last issued from an ecr credential with
	// IssueTokens (an ecrToken credential, encrypted).
	Token []byte `json:"token,omitempty"`
}

// CredentialView is what is stored of a credential besides its secret.
type CredentialView struct {
	Tenant      string `json:"tenant"`
	Registry    string `json:"registry"`
	Kind        string `json:"kind"`
	Username    string `json:"username,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	// IssueTokens (ecr): gateways get short-lived ecrToken credentials
	// issued by the controller, not the AWS keys; re-issued before expiry.
	IssueTokens      bool         `json:"issueTokens,omitempty"`
	TokenFingerprint string       `json:"tokenFingerprint,omitempty"`
	TokenExpiresAt   time.Time    `json:"tokenExpiresAt,omitzero"`
	TokenRefreshAt   time.Time    `json:"tokenRefreshAt,omitzero"`
	ExpiresAt        time.Time    `json:"expiresAt,omitzero"`
	HasCACertificate bool         `json:"hasCaCertificate,omitempty"`
	HasClientCert    bool         `json:"hasClientCertificate,omitempty"`
	RequireTLS       bool         `json:"requireTls,omitempty"`
	Insecure         bool         `json:"insecure,omitempty"`
	UpdatedAt        time.Time    `json:"updatedAt"`
	LastCheck        *CheckResult `json:"lastCheck,omitempty"`
}

// CheckResult is the last check-registry made from the cloud.
type CheckResult struct {
	Image   string `json:"image"`
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Check is the RegistryCheck as protojson.
	Check     map[string]any `json:"check,omitempty"`
	Registry  string         `json:"registry,omitempty"` // the credential used, if any
	CheckedAt time.Time      `json:"checkedAt"`
}
