# Sourced by test.sh and demo.sh: gets the test bed's parts ready.
#   prepare_testbed   builds the CLI, the cluster's components (once per version) and the images
#                     of our binaries (only those that changed); sets $testbed to the CLI's path
#                     and $profile to the Cargo profile the binaries were built with.
# That profile is $INFLIGHT_IMAGE_PROFILE: `bed` (Cargo.toml) unless a benchmark asks for
# `release`, what ships.

prepare_testbed() {
    if [[ $(id -u) != 0 ]]; then
        echo "the test bed needs root (network namespaces, cgroups, containerd)" >&2
        return 1
    fi
    testbed="$CARGO_TARGET_DIR/debug/inflight-testbed"
    step "test bed: Kubernetes, etcd, CoreDNS, KEDA, pause, kube-router (built once per version)"
    cargo build --locked -p inflight-testbed
    local started=$SECONDS
    "$testbed" build
    echo "components ready in $((SECONDS - started))s"

    profile=${INFLIGHT_IMAGE_PROFILE:-bed}
    step "test bed: images of our binaries (profile $profile; rebuilt only when they changed)"
    cargo build --profile "$profile" --locked -p inflight-proxy -p inflight-aggregator -p inflight-activator \
        -p inflight-demo-app -p inflight-injector -p inflight-operator
    "$testbed" images --bin-dir "$CARGO_TARGET_DIR/$profile"
}
