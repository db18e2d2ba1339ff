package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// ECR emulates AWS ECR: an API endpoint speaking AWS JSON 1.1 whose
// GetAuthorizationToken checks the request's SigV4 signature against the
// known access keys and issues "AWS:<token>" credentials, and a registry
// that accepts Basic AWS/<token> while the token is unexpired.
type ECR struct {
	Keys map[string]string // access key id → secret access key
	// Region the API signs for ("us-east-1" when empty).
	Region string
	// TokenTTL is the lifetime of issued tokens (12 hours when zero, as
	// AWS; seconds in tests).
	TokenTTL time.Duration

	calls  atomic.Int64
	mu     sync.Mutex
	tokens map[string]time.Time // token → expiry
}

// apiTarget is the X-Amz-Target of the one operation emulated.
const apiTarget = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"

type apiServer struct {
	url string
	srv *http.Server
}

// RevokeTokens forgets every issued token, as when an IAM policy change
// invalidates them: the registry answers 401 until a new one is fetched.
func (e *ECR) RevokeTokens() {
	e.mu.Lock()
	clear(e.tokens)
	e.mu.Unlock()
}

// TokenCalls counts successful GetAuthorizationToken calls.
func (e *ECR) TokenCalls() int64 { return e.calls.Load() }

// APIEndpoint is the base URL of the ECR API (what AWS_ENDPOINT_URL_ECR
// names for the SDK).
func (s *Server) APIEndpoint() string {
	if s.api == nil {
		return ""
	}
	return s.api.url
}

func startAPI(e *ECR, s *Server) (*apiServer, error) {
	if e.Region == "" {
		e.Region = "us-east-1"
	}
	if e.TokenTTL <= 0 {
		e.TokenTTL = 12 * time.Hour
	}
	e.tokens = map[string]time.Time{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ecr api: %w", err)
	}
	a := &apiServer{url: "http://" + ln.Addr().String()}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.serveAPI(w, r, s) }),
		ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go a.srv.Serve(ln)
	return a, nil
}

func awsError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": typ, "message": msg})
}

func (e *ECR) serveAPI(w http.ResponseWriter, r *http.Request, s *Server) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		awsError(w, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("X-Amz-Target") != apiTarget {
		awsError(w, http.StatusBadRequest, "UnknownOperationException", "only "+apiTarget+" is emulated")
		return
	}
	if typ, msg := e.verify(r, body); typ != "" {
		s.log.Info("ecr: request refused", "reason", typ)
		awsError(w, http.StatusBadRequest, typ, msg)
		return
	}
	raw := make([]byte, 32)
	rand.Read(raw)
	tok := base64.RawURLEncoding.EncodeToString(raw)
	expires := time.Now().Add(e.TokenTTL)
	e.mu.Lock()
	e.tokens[tok] = expires
	e.mu.Unlock()
	e.calls.Add(1)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(map[string]any{"authorizationData": []map[string]any{{
		"authorizationToken": base64.StdEncoding.EncodeToString([]byte("AWS:" + tok)),
		"expiresAt":          float64(expires.UnixMilli()) / 1000,
		"proxyEndpoint":      "https://" + s.Host,
	}}})
}

// verify checks the SigV4 signature: the access key must be known, and the
// signature recomputed with its secret over the signed headers and body
// must match. It returns the AWS error type and message, or "".
func (e *ECR) verify(r *http.Request, body []byte) (string, string) {
	const invalid = "InvalidSignatureException"
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 ")
	if !ok {
		return "MissingAuthenticationTokenException", "Missing Authentication Token"
	}
	fields := map[string]string{}
	for _, f := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	scope := strings.Split(fields["Credential"], "/") // AKID/date/region/service/aws4_request
	if len(scope) != 5 || scope[3] != "ecr" {
		return "IncompleteSignatureException", "bad Credential scope in Authorization"
	}
	secret, known := e.Keys[scope[0]]
	if !known {
		return "UnrecognizedClientException", "The security token included in the request is invalid."
	}
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || time.Since(at).Abs() > 15*time.Minute {
		return invalid, "Signature expired or X-Amz-Date missing"
	}
	clone, _ := http.NewRequestWithContext(context.Background(), r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	clone.Host = r.Host
	for _, h := range strings.Split(fields["SignedHeaders"], ";") {
		if h != "host" && h != "content-length" {
			clone.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	clone.Header.Del("Authorization")
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: scope[0], SecretAccessKey: secret, SessionToken: r.Header.Get("X-Amz-Security-Token")}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, clone, hex.EncodeToString(sum[:]), "ecr", scope[2], at); err != nil {
		return invalid, err.Error()
	}
	if got := clone.Header.Get("Authorization"); got != auth {
		return invalid, "The request signature we calculated does not match the signature you provided."
	}
	return "", ""
}

const ecrChallenge = `Basic realm="cloud-sim ECR"`

func (e *ECR) handler(_ *Server, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "AWS" {
			unauthorized(w, ecrChallenge, "authentication required")
			return
		}
		e.mu.Lock()
		exp, known := e.tokens[p]
		e.mu.Unlock()
		switch {
		case !known:
			unauthorized(w, ecrChallenge, "authentication required")
		case time.Now().After(exp):
			unauthorized(w, ecrChallenge, "Your authorization token has expired. Reauthenticate and try again.")
		case !readOnly(r):
			writeError(w, http.StatusForbidden, "DENIED", "pushes go through cloud-sim")
		default:
			next.ServeHTTP(w, r)
		}
	})
}
