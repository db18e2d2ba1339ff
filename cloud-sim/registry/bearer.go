package registry

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Bearer is Docker Hub's scheme: the registry answers 401 with
// WWW-Authenticate: Bearer realm=…,service=…,scope=…; the client asks the
// realm (a token endpoint that checks Basic credentials) for a short-lived
// token scoped to the repositories it may pull, and retries with it.
// Anonymous token requests get a token without access, as on Docker Hub.
type Bearer struct {
	Users map[string]string // username → password or access token
	// Service names the registry in challenges and tokens.
	Service string
	// TokenTTL is the lifetime of issued tokens (default 5 minutes, as
	// Docker Hub).
	TokenTTL time.Duration

	mu     sync.Mutex
	tokens map[string]grant
}

type grant struct {
	repos   []string
	expires time.Time
}

func (b *Bearer) handler(s *Server, next http.Handler) http.Handler {
	if b.Service == "" {
		b.Service = "cloud-sim-registry"
	}
	if b.TokenTTL <= 0 {
		b.TokenTTL = 5 * time.Minute
	}
	b.tokens = map[string]grant{}
	realm := s.URL + "/token"
	mux := http.NewServeMux()
	mux.HandleFunc("/token", b.issue)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		repo := repository(r)
		tok, ok := bearerToken(r)
		if !ok {
			unauthorized(w, bearerChallenge(realm, b.Service, repo, ""), "authentication required")
			return
		}
		b.mu.Lock()
		g, known := b.tokens[tok]
		b.mu.Unlock()
		switch {
		case !known || time.Now().After(g.expires):
			unauthorized(w, bearerChallenge(realm, b.Service, repo, `,error="invalid_token"`), "authentication required")
		case !readOnly(r):
			writeError(w, http.StatusForbidden, "DENIED", "pushes go through cloud-sim")
		case repo != "" && !slices.Contains(g.repos, repo):
			unauthorized(w, bearerChallenge(realm, b.Service, repo, `,error="insufficient_scope"`), "authentication required")
		default:
			next.ServeHTTP(w, r)
		}
	})
	return mux
}

// issue is the token endpoint (the realm).
func (b *Bearer) issue(w http.ResponseWriter, r *http.Request) {
	var repos []string
	if u, p, ok := r.BasicAuth(); ok {
		if want, known := b.Users[u]; !known || want != p {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"details":"incorrect username or password"}`))
			return
		}
		repos = scopeRepos(r.URL.Query()["scope"])
	}
	raw := make([]byte, 24)
	rand.Read(raw)
	tok := hex.EncodeToString(raw)
	now := time.Now()
	b.mu.Lock()
	for t, g := range b.tokens {
		if now.After(g.expires) {
			delete(b.tokens, t)
		}
	}
	b.tokens[tok] = grant{repos: repos, expires: now.Add(b.TokenTTL)}
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": int(b.TokenTTL / time.Second), "issued_at": now.UTC().Format(time.RFC3339),
	})
}

func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && (h[:7] == "Bearer " || h[:7] == "bearer ") {
		return h[7:], true
	}
	return "", false
}
