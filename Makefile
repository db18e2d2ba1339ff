# Fleet Agent. `make demo` runs the end-to-end demo; `make test` runs the tests.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
PROTOC_GEN_GO_VERSION := v1.36.12
STATICCHECK_VERSION   := v0.6.1

.PHONY: all build test demo bench screenshots proto check-proto lint dist clean

all: build

build:
	# Static, as make dist ships it and the tests build it.
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/fleet-agent ./agent
	# The ECR token helper, which the agent runs from beside its executable.
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/fleet-agent-ecr ./agent/cmd/fleet-agent-ecr
	# Static: cloud-sim ships itself as the sample image's only layer.
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/cloud-sim ./cloud-sim

# Every package's tests under the race detector; the scenarios in
# shards at once, after the programs they run are built (scripts/test.sh).
test:
	GO=$(GO) ./scripts/test.sh

demo: build
	./bin/cloud-sim demo

# The console's screenshots in docs/console/, taken by its browser tests.
screenshots:
	CONSOLE_SCREENSHOTS=1 $(GO) test ./scenarios/ -run 'TestConsole' -count 1

# Benchmarks: figures go to docs/benchmarks.md with this command.
bench:
	$(GO) test ./scenarios/ -run '^$$' -bench 'RoundTrip|IdleMemory' -benchtime 500x -count 1
	$(GO) test ./scenarios/ -run '^$$' -bench 'DeployCachedImage|UpdateDowntime' -benchtime 20x -count 1
	$(GO) test ./scenarios/ -run '^$$' -bench 'AppUpdate' -benchtime 10x -count 1 -timeout 20m
	$(GO) test ./scenarios/ -run '^$$' -bench 'AuthenticatedPull' -benchtime 10x -count 3
	$(GO) test ./scenarios/ -run '^$$' -bench 'ECRTokenCalls' -benchtime 1000x -count 1
	$(GO) test ./scenarios/ -run '^$$' -bench 'ControllerMemory|FleetBirths' -benchtime 1x -count 1 -timeout 20m
	$(GO) test ./scenarios/ -run '^$$' -bench 'ControllerIngest' -benchtime 40000x -count 3
	$(GO) test ./scenarios/ -run '^$$' -bench 'IngestCost' -benchtime 1x -count 1
	$(GO) test ./scenarios/ -run '^$$' -bench 'ConsoleEventFanout' -benchtime 1x -count 3 -timeout 10m
	$(GO) test ./cloud-sim/api/ ./cloud-sim/console/ -run '^$$' -bench 'ListGatewaysPage|Overview|GatewaysPage' -count 3
	$(GO) test ./agent/engine/ -run '^$$' -bench 'LoadVsLoopbackPull' -benchtime 5x -count 3
	$(GO) test ./scenarios/ -run '^$$' -bench 'PullCleanLink|PullSlowLink' -benchtime 4x -count 1 -timeout 20m
	$(GO) test ./scenarios/ -run '^$$' -bench 'PullCutLink' -benchtime 2x -count 1 -timeout 30m
	ROLLOUT_PLOT=$(CURDIR)/docs/rollout-10k.png $(GO) test ./scenarios/ -run '^$$' -bench 'Rollout' -benchtime 1x -count 1 -timeout 20m
	$(GO) test ./scenarios/ -run '^$$' -bench 'PrefetchActivation' -benchtime 1x -count 1 -timeout 20m
	$(GO) test ./protocol/codec/ -run '^$$' -bench 'UnmarshalStatus' -benchtime 200000x -benchmem -count 3
	cd third_party/paho.golang && $(GO) test ./packets/ -run '^$$' -bench 'ReadPacket' -benchmem -count 3
	$(GO) test ./cloud-sim/state/ -run '^$$' -bench 'GatewayRecord' -benchmem -count 3
	$(GO) test ./cloud-sim/broker/ -run '^$$' -bench 'RetainedQoS1' -benchtime 20000x -count 7
	$(GO) test ./cloud-sim/broker/ -run '^$$' -bench 'ConnectionMemory' -benchtime 1x -count 3

# Regenerates protocol/fleet/v1/fleet.pb.go (committed, so a build needs no protoc).
proto:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler"; exit 1; }
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative protocol/fleet/v1/fleet.proto
	PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative cloud-sim/state/recordpb/records.proto

# Fails when the committed generated code differs from what `make proto` writes.
check-proto: proto
	git diff --exit-code -- protocol/ cloud-sim/state/recordpb/

lint:
	bash -n .ci/run && bash -n scripts/test.sh
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Static binaries for the gateway architectures.
dist:
	@for p in linux/amd64 linux/arm64 linux/arm/7; do \
		os=$${p%%/*}; rest=$${p#*/}; arch=$${rest%%/*}; arm=$${rest#*/}; [ "$$arm" = "$$rest" ] && arm=; \
		suffix=$$os-$$arch$${arm:+v$$arm}; \
		echo "dist/fleet-agent-$$suffix"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/fleet-agent-$$suffix ./agent || exit 1; \
		echo "dist/fleet-agent-ecr-$$suffix"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/fleet-agent-ecr-$$suffix ./agent/cmd/fleet-agent-ecr || exit 1; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/cloud-sim-$$suffix ./cloud-sim || exit 1; \
	done

clean:
	rm -rf bin dist
