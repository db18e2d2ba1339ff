package console

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// credentialsData is what the credentials page shows: a tenant's
// credentials (never their secrets: the API has none to give), and the
// forms that set, check, push and delete them.
type credentialsData struct {
	Tenant      string
	Tenants     []string
	Credentials []api.CredentialView
	Target      api.Target // the push form's, of Tenant
	Now         time.Time
}

// credentials renders a tenant's registry credentials; credentials.js
// keeps the list live.
func (c *Console) credentials(w http.ResponseWriter, r *http.Request) {
	d := credentialsData{Tenant: strings.TrimSpace(r.URL.Query().Get("tenant")), Now: c.cfg.Now()}
	tenants, err := c.tenants(r)
	if err != nil {
		c.fail(w, r, "Credentials", err)
		return
	}
	d.Tenants = tenants
	if d.Tenant == "" && len(tenants) == 1 {
		d.Tenant = tenants[0]
	}
	d.Target = api.Target{Tenant: d.Tenant, All: true}
	if d.Tenant != "" {
		var l struct {
			Credentials []api.CredentialView `json:"credentials"`
		}
		if err := c.get(r.Context(), "/v1/tenants/"+url.PathEscape(d.Tenant)+"/credentials", &l); err != nil {
			c.fail(w, r, "Credentials of "+d.Tenant, err)
			return
		}
		d.Credentials = l.Credentials
	}
	c.render(w, r, "credentials", view{Title: "Credentials", Nav: "credentials", Data: d})
}

// TokenState tells where an ECR credential's token issuing stands: the
// token's expiry and the next refresh, relative to now.
func (d credentialsData) TokenState(v api.CredentialView) string {
	if !v.IssueTokens {
		return ""
	}
	if v.TokenExpiresAt.IsZero() {
		return "issues tokens; none issued yet"
	}
	s := "token expires " + inOrAgo(d.Now, v.TokenExpiresAt)
	if !v.TokenRefreshAt.IsZero() {
		s += ", refreshed " + inOrAgo(d.Now, v.TokenRefreshAt)
	}
	return s
}

// inOrAgo says when t is from now: "in 11h 58m" or "3m ago".
func inOrAgo(now, t time.Time) string {
	d := t.Sub(now).Round(time.Minute)
	if d < 0 {
		return short(-d) + " ago"
	}
	return "in " + short(d)
}

// short writes a duration in hours and minutes: "11h 58m", "4m".
func short(d time.Duration) string {
	h, m := int(d.Hours()), int(d.Minutes())%60
	switch {
	case h >= 48:
		return strconv.Itoa(h/24) + "d " + strconv.Itoa(h%24) + "h"
	case h > 0 && m == 0:
		return strconv.Itoa(h) + "h"
	case h > 0:
		return strconv.Itoa(h) + "h " + strconv.Itoa(m) + "m"
	}
	return strconv.Itoa(m) + "m"
}
