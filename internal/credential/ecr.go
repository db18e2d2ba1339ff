package credential

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TokenGetter is the one ECR API call made for a credential.
type TokenGetter interface {
	GetAuthorizationToken(ctx context.Context, in *ecr.GetAuthorizationTokenInput, opts ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error)
}

// NewECRClient builds the ECR client of an ecr credential with the AWS SDK:
// static keys when given, else the SDK's default credential chain; a role
// to assume when given. Endpoint overrides come from the SDK's own settings
// (AWS_ENDPOINT_URL_ECR, the shared config file).
func NewECRClient(ctx context.Context, c *fleetv1.EcrAuth, region string) (TokenGetter, error) {
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(region)}
	if c.GetAccessKeyId() != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(c.GetAccessKeyId(), c.GetSecretAccessKey(), c.GetSessionToken())))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	if arn := c.GetRoleArn(); arn != "" {
		cfg.Credentials = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(sts.NewFromConfig(cfg), arn))
	}
	return ecr.NewFromConfig(cfg), nil
}

// ecrHost matches an ECR registry host and captures its region.
var ecrHost = regexp.MustCompile(`^[0-9]{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$`)

// ECRRegion is the credential's region, or the one in the host.
func ECRRegion(c *fleetv1.EcrAuth, host string) (string, bool) {
	if c.GetRegion() != "" {
		return c.GetRegion(), true
	}
	if m := ecrHost.FindStringSubmatch(host); m != nil {
		return m[1], true
	}
	return "", false
}

// Token is a registry login with its expiry and the time to replace it.
type Token struct {
	User, Password string
	Expires        time.Time
	RefreshAt      time.Time
}

// refreshMargin is how long before its expiry a token is replaced: a
// quarter of its lifetime, at most 30 minutes (11.5 h into a 12 h token).
func refreshMargin(lifetime time.Duration) time.Duration {
	return min(lifetime/4, 30*time.Minute)
}

// FetchECRToken calls GetAuthorizationToken once.
func FetchECRToken(ctx context.Context, client TokenGetter, now time.Time) (*Token, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := client.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		return nil, ecrErr(err)
	}
	if len(out.AuthorizationData) == 0 {
		return nil, fmt.Errorf("%w: ECR GetAuthorizationToken returned no authorization data", errdefs.ErrUnauthenticated)
	}
	d := out.AuthorizationData[0]
	raw, err := base64.StdEncoding.DecodeString(aws.ToString(d.AuthorizationToken))
	user, password, ok := strings.Cut(string(raw), ":")
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: ECR returned an authorization token that is not base64 of user:password", errdefs.ErrUnauthenticated)
	}
	expires := aws.ToTime(d.ExpiresAt)
	if expires.IsZero() {
		expires = now.Add(12 * time.Hour)
	}
	return &Token{User: user, Password: password, Expires: expires, RefreshAt: expires.Add(-refreshMargin(expires.Sub(now)))}, nil
}

// ecrErr maps an AWS error onto an error kind, keeping AWS's code and
// message (which never contain the secret key).
func ecrErr(err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		kind := errdefs.ErrUnauthenticated
		switch apiErr.ErrorCode() {
		case "AccessDeniedException", "AccessDenied":
			kind = errdefs.ErrPermissionDenied
		case "ServerException", "ThrottlingException", "ServiceUnavailable":
			kind = errdefs.ErrRegistryUnreachable
		}
		return fmt.Errorf("%w: ECR GetAuthorizationToken: %s: %s", kind, apiErr.ErrorCode(), apiErr.ErrorMessage())
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: ECR GetAuthorizationToken: %v", errdefs.ErrRegistryUnreachable, err)
	}
	return fmt.Errorf("%w: ECR GetAuthorizationToken: %v", errdefs.ErrUnauthenticated, err)
}

// TokenCredential exchanges an ecr credential for an ecrToken credential
// of the same registry and TLS settings, with the time to replace it: what
// a controller sends to gateways that hold no AWS keys of their own.
func TokenCredential(ctx context.Context, c *fleetv1.Credential, now time.Time) (tok *fleetv1.Credential, refreshAt time.Time, err error) {
	key, err := Validate("credential", proto.Clone(c).(*fleetv1.Credential))
	if err != nil {
		return nil, time.Time{}, err
	}
	if c.GetEcr() == nil {
		return nil, time.Time{}, errdefs.Invalid("credential.ecr", "is required to issue ECR tokens")
	}
	region, _ := ECRRegion(c.GetEcr(), key.Host)
	client, err := NewECRClient(ctx, c.GetEcr(), region)
	if err != nil {
		return nil, time.Time{}, err
	}
	t, err := FetchECRToken(ctx, client, now)
	if err != nil {
		return nil, time.Time{}, err
	}
	return &fleetv1.Credential{
		Registry:          c.GetRegistry(),
		Kind:              &fleetv1.Credential_EcrToken{EcrToken: &fleetv1.EcrToken{Password: t.Password, ExpiresAt: timestamppb.New(t.Expires)}},
		CaCertificate:     c.GetCaCertificate(),
		ClientCertificate: c.GetClientCertificate(),
		ClientKey:         c.GetClientKey(),
		RequireTls:        c.GetRequireTls(),
	}, t.RefreshAt, nil
}
