# The two commands of the README. Both run as root on Linux.
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: lab test deps quickstart bench proto crash

## lab: the end-to-end lab (installs what a fresh machine lacks, then runs it);
## exits non-zero when any verdict fails
##   make lab LABFLAGS="-subnet -fence before-copy"
lab: deps
	$(GO) run ./examples/lab -json lab-report.json $(LABFLAGS)

## test: go vet + every test, with the race detector (installs what a
## fresh machine lacks first, as lab does)
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 60m ./...

## crash: the controller's crash matrix (issue 13): one remote lab run per
## point of FIG. 3, the owning controller killed there with SIGKILL and a
## standby finishing the migration (etcd journal: crash-report.json), then
## the same with one controller restarted on its bbolt journal
## (crash-report-bolt.json); non-zero if a point fails
crash: deps
	$(GO) run ./examples/lab -crash all -standby -json crash-report.json $(LABFLAGS)
	$(GO) run ./examples/lab -crash all -json crash-report-bolt.json $(LABFLAGS)

deps:
	@bash scripts/install-deps.sh

quickstart:
	$(GO) run ./examples/quickstart

bench:
	$(GO) test -run '^$$' -bench . -benchtime 20x ./...

## proto: regenerate agent/agentpb from agent/proto (protoc from Debian's
## protobuf-compiler; the Go plugins at the versions go.mod pins)
PROTO_BIN := $(CURDIR)/out/protobin
proto:
	@command -v protoc >/dev/null || apt-get install -y -q protobuf-compiler
	GOBIN=$(PROTO_BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(PROTO_BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	PATH=$(PROTO_BIN):$$PATH protoc -I agent/proto \
		--go_out=. --go_opt=module=github.com/sealift/sealift \
		--go-grpc_out=. --go-grpc_opt=module=github.com/sealift/sealift \
		agent/proto/sealift/agent/v1/*.proto
