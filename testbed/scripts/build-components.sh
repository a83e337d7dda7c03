#!/usr/bin/env bash
# Builds, once, every third-party part of the test bed from the Go module proxy and caches it under
# $INFLIGHT_CACHE/testbed/<component>-<version>/. A component whose `.done` stamp exists is skipped, so
# a second run takes a second. Each step prints what it does and how long it took; a failing step says
# which command failed, and its log is kept.
#
#   build-components.sh [packages] [kubernetes] [etcd] [coredns] [keda] [pause] [kube-router]
#                       [helm] [cert-manager]
#                       (default: all)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
cache="${INFLIGHT_CACHE:-$HOME/.cache/inflight}/testbed"
mkdir -p "$cache"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
export GOPATH="${GOPATH:-$HOME/go}"

step() { printf '\033[1m[testbed build]\033[0m %s\n' "$*" >&2; }
# run LOG CMD...: runs CMD with its output in LOG; on failure prints the tail and names the command.
run() {
	local log="$1"
	shift
	local start=$SECONDS
	if ! "$@" >>"$log" 2>&1; then
		echo "FAILED ($((SECONDS - start))s): $*" >&2
		echo "--- last lines of $log ---" >&2
		tail -n 30 "$log" >&2
		exit 1
	fi
	step "  ok in $((SECONDS - start))s: $*"
}

packages() {
	local need=()
	for p in containerd runc containernetworking-plugins buildah iptables ipset iproute2 conntrack procps util-linux gcc libc6-dev; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
	done
	if ((${#need[@]})); then
		step "apt-get install ${need[*]}"
		local log="$cache/apt.log"
		: >"$log"
		run "$log" apt-get update -qq
		run "$log" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
	fi
	command -v go >/dev/null || {
		echo "FAILED: no Go toolchain on PATH (needed to build Kubernetes, etcd, CoreDNS and KEDA)" >&2
		exit 1
	}
}

# Kubernetes: `go install` refuses k8s.io/kubernetes (its go.mod replaces the staging modules with
# paths its module zip leaves out), so a wrapper module requires it and points each staging module at
# its published v0.X.Y.
kubernetes() {
	local dir="$cache/kubernetes-$KUBERNETES_VERSION"
	[[ -f $dir/.done ]] && return
	step "Kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl)"
	rm -rf "$dir" && mkdir -p "$dir/src" "$dir/bin"
	local log="$dir/build.log" staging="v0.${KUBERNETES_VERSION#v1.}"
	{
		echo "module inflight.dev/testbed/kubernetes"
		echo "go 1.24.0"
		echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
		# The module's own go.mod, through whatever GOPROXY says.
		awk -v v="$staging" '/=> \.\/staging\/src\// { print "replace " $1 " => " $1 " " v }' \
			"$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
	} >"$dir/src/go.mod" || {
		echo "FAILED: could not read k8s.io/kubernetes@$KUBERNETES_VERSION's go.mod from the module proxy" >&2
		exit 1
	}
	echo 'package tools' >"$dir/src/tools.go"
	local stamp="-s -w"
	for kv in gitVersion="$KUBERNETES_VERSION" gitMajor=1 gitMinor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)" \
		gitTreeState=clean buildDate=1970-01-01T00:00:00Z; do
		stamp+=" -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
	done
	cd "$dir/src"
	run "$log" go mod download k8s.io/kubernetes
	run "$log" go get "k8s.io/kubernetes@$KUBERNETES_VERSION"
	run "$log" go build -mod=mod -ldflags "$stamp" -o "$dir/bin/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
	touch "$dir/.done"
}

# etcd: its server module replaces its siblings with ../ paths; same wrapper trick.
etcd() {
	local dir="$cache/etcd-$ETCD_VERSION"
	[[ -f $dir/.done ]] && return
	step "etcd $ETCD_VERSION"
	rm -rf "$dir" && mkdir -p "$dir/src" "$dir/bin"
	local log="$dir/build.log"
	cat >"$dir/src/go.mod" <<EOF
module inflight.dev/testbed/etcd
go 1.24.0
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
replace go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
replace go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
replace go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
replace go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
EOF
	echo 'package tools' >"$dir/src/tools.go"
	cd "$dir/src"
	run "$log" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
	run "$log" go build -mod=mod -ldflags "-s -w" -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3
	touch "$dir/.done"
}

coredns() {
	local dir="$cache/coredns-$COREDNS_VERSION"
	[[ -f $dir/.done ]] && return
	step "CoreDNS $COREDNS_VERSION"
	rm -rf "$dir" && mkdir -p "$dir/bin"
	local log="$dir/build.log"
	run "$log" env GOBIN="$dir/bin" go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
	touch "$dir/.done"
}

# KEDA: only non-local replace lines, so build inside a copy of its module. Its kustomize config
# (CRDs, RBAC, Deployments, APIService) comes from the same module, so it always matches the binaries.
keda() {
	local dir="$cache/keda-$KEDA_VERSION"
	[[ -f $dir/.done ]] && return
	step "KEDA $KEDA_VERSION (operator, metrics API server, CRDs)"
	rm -rf "$dir" && mkdir -p "$dir/bin"
	local log="$dir/build.log" src
	run "$log" go mod download "github.com/kedacore/keda/v2@$KEDA_VERSION"
	src="$(go env GOMODCACHE)/github.com/kedacore/keda/v2@$KEDA_VERSION"
	cp -r "$src" "$dir/src" && chmod -R u+w "$dir/src"
	cp -r "$dir/src/config" "$dir/config"
	cd "$dir/src"
	local stamp="-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v} -X github.com/kedacore/keda/v2/version.GitCommit=module"
	run "$log" go build -mod=mod -ldflags "$stamp" -o "$dir/bin/keda" ./cmd/operator
	run "$log" go build -mod=mod -ldflags "$stamp" -o "$dir/bin/keda-adapter" ./cmd/adapter
	rm -rf "$dir/src"
	touch "$dir/.done"
}

# The pause container: pause.c from the Kubernetes tree, static.
pause() {
	local dir="$cache/pause-$KUBERNETES_VERSION"
	[[ -f $dir/.done ]] && return
	step "pause (build/pause/linux/pause.c of k8s.io/kubernetes@$KUBERNETES_VERSION)"
	rm -rf "$dir" && mkdir -p "$dir/bin"
	local log="$dir/build.log" src
	run "$log" go mod download "k8s.io/kubernetes@$KUBERNETES_VERSION"
	src="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBERNETES_VERSION/build/pause/linux/pause.c"
	run "$log" gcc -Os -static -Wall -Werror -DVERSION="inflight-$KUBERNETES_VERSION" -o "$dir/bin/pause" "$src"
	touch "$dir/.done"
}

# kube-router, for its NetworkPolicy firewall only (`up --network-policy`; tests, never shipped). Its
# `go install` works as is; it drives Debian's iptables and ipset.
kube_router() {
	local dir="$cache/kube-router-$KUBE_ROUTER_VERSION"
	[[ -f $dir/.done ]] && return
	step "kube-router $KUBE_ROUTER_VERSION (NetworkPolicy firewall)"
	rm -rf "$dir" && mkdir -p "$dir/bin"
	local log="$dir/build.log"
	local stamp="-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
	run "$log" env GOBIN="$dir/bin" go install -ldflags "$stamp" \
		"github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
	touch "$dir/.done"
}

# Helm, for the chart (`helm lint`, `helm template`; tests, never shipped). Its `go install` works as
# is; the version it reports is stamped.
helm() {
	local dir="$cache/helm-$HELM_VERSION"
	[[ -f $dir/.done ]] && return
	step "Helm $HELM_VERSION"
	rm -rf "$dir" && mkdir -p "$dir/bin"
	local log="$dir/build.log"
	local stamp="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
	run "$log" env GOBIN="$dir/bin" go install -ldflags "$stamp" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
	touch "$dir/.done"
}

# cert-manager's CRDs, as its module ships them (deploy/crds), for the chart's tests; nothing is built.
cert_manager() {
	local dir="$cache/cert-manager-$CERT_MANAGER_VERSION"
	[[ -f $dir/.done ]] && return
	step "cert-manager $CERT_MANAGER_VERSION (its CRDs only)"
	rm -rf "$dir" && mkdir -p "$dir/crds"
	local log="$dir/build.log"
	run "$log" go mod download "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION"
	cp "$(go env GOMODCACHE)/github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION"/deploy/crds/*.yaml "$dir/crds/"
	chmod -R u+w "$dir/crds"
	touch "$dir/.done"
}

all=(packages kubernetes etcd coredns keda pause kube-router helm cert-manager)
started=$SECONDS
for c in "${@:-${all[@]}}"; do
	case "$c" in
	packages | kubernetes | etcd | coredns | keda | pause) (cd / && "$c") ;;
	kube-router) (cd / && kube_router) ;;
	helm) (cd / && helm) ;;
	cert-manager) (cd / && cert_manager) ;;
	*)
		echo "unknown component '$c' (known: ${all[*]})" >&2
		exit 2
		;;
	esac
done
step "all built in $((SECONDS - started))s; cache: $cache"
