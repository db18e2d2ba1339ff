package api

import (
	"net/http"

	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/internal/errdefs"
)

// The gateways' identities in the cloud: what they log in as and the
// groups and labels the cloud assigns them, by which they are targeted.

func (a *api) getIdentity(w http.ResponseWriter, r *http.Request) {
	d, err := a.c.Provisioned(r.PathValue("tenant"), r.PathValue("id"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, identityOf(d))
}

func (a *api) deprovision(w http.ResponseWriter, r *http.Request) {
	tenant, id := r.PathValue("tenant"), r.PathValue("id")
	live, err := a.c.Deprovision(r.Context(), tenant, id)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, Deprovisioned{Tenant: tenant, ID: id, Disconnected: live, Inventory: "kept"})
}

// setLabels replaces the labels (PUT) or merges a JSON merge patch into
// them (PATCH: a value sets, null removes).
func (a *api) setLabels(w http.ResponseWriter, r *http.Request) {
	var req LabelsRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Labels == nil {
		a.fail(w, errdefs.Invalid("labels", "is required: {\"labels\": {\"site\": \"berlin\"}}"))
		return
	}
	replace := r.Method == http.MethodPut
	for k, v := range req.Labels {
		if v == nil && replace {
			a.fail(w, errdefs.Invalid("labels."+k, "is null: PUT replaces every label; remove one with PATCH"))
			return
		}
	}
	a.assign(w, r, func(as *identity.Assignment) {
		if replace || as.Labels == nil {
			as.Labels = map[string]string{}
		}
		for k, v := range req.Labels {
			if v == nil {
				delete(as.Labels, k)
			} else {
				as.Labels[k] = *v
			}
		}
	})
}

func (a *api) setGroups(w http.ResponseWriter, r *http.Request) {
	var req GroupsRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Groups == nil {
		a.fail(w, errdefs.Invalid("groups", "is required: {\"groups\": [\"berlin\"]}, [] for none"))
		return
	}
	a.assign(w, r, func(as *identity.Assignment) { as.Groups = req.Groups })
}

func (a *api) assign(w http.ResponseWriter, r *http.Request, change func(*identity.Assignment)) {
	d, err := a.c.Assign(r.Context(), r.PathValue("tenant"), r.PathValue("id"), change)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, identityOf(d))
}
