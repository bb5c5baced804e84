# The two commands of the README. Both run as root on Linux.
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: lab test deps quickstart bench

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

deps:
	@bash scripts/install-deps.sh

quickstart:
	$(GO) run ./examples/quickstart

bench:
	$(GO) test -run '^$$' -bench . -benchtime 20x ./...
