// Package awsecr gets ECR tokens with the AWS SDK. The cloud imports it
// (tenantcred, simulated gateways); the agent does not: it runs the
// fleet-agent-ecr helper, which does (see agent/ecrexec), so that the SDK
// is not part of the agent's binary and resident memory.
package awsecr

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
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

	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TokenGetter is the one ECR API call made for a credential.
type TokenGetter interface {
	GetAuthorizationToken(ctx context.Context, in *ecr.GetAuthorizationTokenInput, opts ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error)
}

// NewClient builds the ECR client of an ecr credential with the AWS SDK:
// static keys when given, else the SDK's default credential chain; a role
// to assume when given. Endpoint overrides come from the SDK's own settings
// (AWS_ENDPOINT_URL_ECR, the shared config file).
func NewClient(ctx context.Context, c *fleetv1.EcrAuth, region string) (TokenGetter, error) {
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

// Fetch is a credential.TokenSource: a new client, one
// GetAuthorizationToken call.
func Fetch(ctx context.Context, c *fleetv1.EcrAuth, region string, now time.Time) (*credential.Token, error) {
	client, err := NewClient(ctx, c, region)
	if err != nil {
		return nil, err
	}
	return FetchWith(ctx, client, now)
}

// FetchWith calls GetAuthorizationToken once.
func FetchWith(ctx context.Context, client TokenGetter, now time.Time) (*credential.Token, error) {
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
	return credential.NewToken(user, password, aws.ToTime(d.ExpiresAt), now), nil
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
	key, err := credential.Validate("credential", proto.Clone(c).(*fleetv1.Credential))
	if err != nil {
		return nil, time.Time{}, err
	}
	if c.GetEcr() == nil {
		return nil, time.Time{}, errdefs.Invalid("credential.ecr", "is required to issue ECR tokens")
	}
	region, _ := credential.ECRRegion(c.GetEcr(), key.Host)
	t, err := Fetch(ctx, c.GetEcr(), region, now)
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

// CheckImage checks image with cred (nil: anonymous) against its registry,
// reading manifests only, with ECR tokens fetched in this process: the
// cloud's registry check. Every connection, redirects included, is opened
// by dial (the cloud's egress policy; nil dials anywhere), and errors never
// carry what a registry answered, only its HTTP status.
func CheckImage(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), cred *fleetv1.Credential, image string) (*fleetv1.RegistryCheck, error) {
	return credential.Checker{ECR: Fetch, Dial: dial, RedactAnswers: true}.Check(ctx, cred, image)
}
