package tenantcred

import "github.com/fleet-agent/fleet/cloud-sim/state"

// stored is rec as the store keeps it.
func (rec *Credential) stored() *state.Credential {
	v := rec.CredentialView
	s := &state.Credential{CredentialView: state.CredentialView{Tenant: v.Tenant, Registry: v.Registry, Kind: v.Kind, Username: v.Username,
		Fingerprint: v.Fingerprint, IssueTokens: v.IssueTokens, TokenFingerprint: v.TokenFingerprint, TokenExpiresAt: v.TokenExpiresAt,
		TokenRefreshAt: v.TokenRefreshAt, ExpiresAt: v.ExpiresAt, HasCACertificate: v.HasCACertificate, HasClientCert: v.HasClientCert,
		RequireTLS: v.RequireTLS, Insecure: v.Insecure, UpdatedAt: v.UpdatedAt}, Secret: rec.Secret, Token: rec.Token}
	if v.LastCheck != nil {
		c := state.CheckResult(*v.LastCheck)
		s.LastCheck = &c
	}
	return s
}

// restore is the credential s stores.
func restore(s *state.Credential) *Credential {
	v := s.CredentialView
	rec := &Credential{CredentialView: CredentialView{Tenant: v.Tenant, Registry: v.Registry, Kind: v.Kind, Username: v.Username,
		Fingerprint: v.Fingerprint, IssueTokens: v.IssueTokens, TokenFingerprint: v.TokenFingerprint, TokenExpiresAt: v.TokenExpiresAt,
		TokenRefreshAt: v.TokenRefreshAt, ExpiresAt: v.ExpiresAt, HasCACertificate: v.HasCACertificate, HasClientCert: v.HasClientCert,
		RequireTLS: v.RequireTLS, Insecure: v.Insecure, UpdatedAt: v.UpdatedAt}, Secret: s.Secret, Token: s.Token}
	if v.LastCheck != nil {
		c := CheckResult(*v.LastCheck)
		rec.LastCheck = &c
	}
	return rec
}
