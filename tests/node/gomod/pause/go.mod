// The pod sandbox's process, built by tests/node/build.sh (no registry here to pull registry.k8s.io/pause from).

module datarun.test/node/pause

go 1.24.0
