#!/usr/bin/env bash
# Build the control-plane binaries (kube-apiserver, kube-controller-manager, kubectl), etcd,
# helm, kstatus (hack/kstatus), promtool, prometheus and kube-score, and the real node's
# (kubelet, kube-proxy, kube-scheduler, containerd, its runc shim, ctr, the CNI plugins, CoreDNS
# and a pause binary) from pinned Go modules into a cache outside git. Idempotent: a finished
# binary is kept.
#   SWITCHBOARD_CACHE  cache root (default ~/.cache/switchboard)
#   SWITCHBOARD_TOOLS  all (default) | cluster: only what a cluster and the demo need (no
#                      promtool, prometheus or kube-score: the tests' checkers)
#   SWITCHBOARD_NODE   1 (default) | 0: leave out the real node (CI's oldest-version run)
# Prints the bin directories it filled, one per line, on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}
log() { printf '[build-binaries] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed (need Go 1.26+)"; exit 1; }
gov=$(go env GOVERSION)                       # e.g. go1.26.8
minor=$(echo "$gov" | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "$minor" -lt 26 ]; then log "need Go 1.26+, have $gov"; exit 1; fi
# Go 1.27 turns jsonv2 on by default, and the apiserver then serves broken OpenAPI.
if [ "$minor" -ge 27 ]; then export GOEXPERIMENT=nojsonv2; fi
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local

# wrapper DIR MODULE REQUIRE... : a throwaway main module that pins what we build.
wrapper() {
  local dir=$1 mod=$2; shift 2
  mkdir -p "$dir"
  { echo "module $mod"; echo; echo "go 1.26"; } >"$dir/go.mod"
  for r in "$@"; do echo "$r" >>"$dir/go.mod"; done
}

build() { # build DIR OUT PKG [LDFLAGS]
  local dir=$1 out=$2 pkg=$3 ldflags=${4:-}
  if [ -x "$out" ]; then log "cached: $out"; return; fi
  local t0=$SECONDS
  log "building $(basename "$out") from $pkg ..."
  # A temporary name per process: two builds at once (CI and a test) must not collide.
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp.$$" "$pkg")
  mv "$out.tmp.$$" "$out"
  log "built $(basename "$out") in $((SECONDS - t0)) s"
}

# --- etcd ---------------------------------------------------------------------------------
etcd_dir=$cache/etcd-$ETCD_VERSION
mkdir -p "$etcd_dir/bin"
if [ ! -x "$etcd_dir/bin/etcd" ]; then
  e=$ETCD_VERSION
  wrapper "$etcd_dir/src" switchboard.local/etcd-build \
    "require go.etcd.io/etcd/server/v3 $e" \
    "replace (" \
    "  go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $e" \
    "  go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $e" \
    "  go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $e" \
    "  go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $e" \
    ")"
  echo 'package tools; import _ "go.etcd.io/etcd/server/v3"' >"$etcd_dir/src/tools.go"
  (cd "$etcd_dir/src" && go mod tidy >/dev/null 2>&1 || true)
  build "$etcd_dir/src" "$etcd_dir/bin/etcd" go.etcd.io/etcd/server/v3
fi

# --- Kubernetes ---------------------------------------------------------------------------
k8s_dir=$cache/k8s-$K8S_VERSION
mkdir -p "$k8s_dir/bin"
staging_v=v0.${K8S_VERSION#v1.}
staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
  kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming"
need_k8s=0
node=${SWITCHBOARD_NODE:-1}
k8s_bins="kube-apiserver kube-controller-manager kubectl"
[ "$node" = 1 ] && k8s_bins+=" kubelet kube-proxy kube-scheduler"
for b in $k8s_bins; do [ -x "$k8s_dir/bin/$b" ] || need_k8s=1; done
if [ $need_k8s = 1 ]; then
  reps=("replace (")
  for m in $staging; do reps+=("  k8s.io/$m => k8s.io/$m $staging_v"); done
  reps+=(")")
  wrapper "$k8s_dir/src" switchboard.local/k8s-build "require k8s.io/kubernetes $K8S_VERSION" "${reps[@]}"
  cat >"$k8s_dir/src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  major=${K8S_VERSION#v}; major=${major%%.*}
  kminor=${K8S_VERSION#v*.}; kminor=${kminor%%.*}
  ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$kminor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in $k8s_bins; do
    build "$k8s_dir/src" "$k8s_dir/bin/$b" "k8s.io/kubernetes/cmd/$b" "$ld"
  done
fi

# --- helm ---------------------------------------------------------------------------------
helm_dir=$cache/helm-$HELM_VERSION
mkdir -p "$helm_dir/bin"
if [ ! -x "$helm_dir/bin/helm" ]; then
  wrapper "$helm_dir/src" switchboard.local/helm-build "require helm.sh/helm/v3 $HELM_VERSION"
  echo 'package tools; import _ "helm.sh/helm/v3/cmd/helm"' >"$helm_dir/src/tools.go"
  hv=helm.sh/helm/v3/internal/version
  build "$helm_dir/src" "$helm_dir/bin/helm" helm.sh/helm/v3/cmd/helm "-X $hv.version=$HELM_VERSION"
fi

# --- kstatus (sigs.k8s.io/cli-utils: the status library Flux waits with) -------------------
ks_dir=$cache/kstatus-$CLI_UTILS_VERSION-$(sha256sum "$here/kstatus/main.go" | cut -c1-12)
mkdir -p "$ks_dir/bin"
if [ ! -x "$ks_dir/bin/kstatus" ]; then
  wrapper "$ks_dir/src" switchboard.local/kstatus "require sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"
  cp "$here/kstatus/main.go" "$ks_dir/src/main.go"
  (cd "$ks_dir/src" && go mod tidy >/dev/null 2>&1 || true)
  build "$ks_dir/src" "$ks_dir/bin/kstatus" .
fi
tools=${SWITCHBOARD_TOOLS:-all}
# --- promtool and prometheus (the alert rules' unit tests and a real scrape) -----------------
# Service discovery is left out (remove_all_sd): the tests use static targets only, and the
# cloud SDKs it pulls in would double the build.
prom_dir=$cache/prometheus-$PROMETHEUS_VERSION
mkdir -p "$prom_dir/bin"
if [ "$tools" = all ] && { [ ! -x "$prom_dir/bin/promtool" ] ||
                           [ ! -x "$prom_dir/bin/prometheus" ]; }; then
  wrapper "$prom_dir/src" switchboard.local/prometheus-build \
    "require github.com/prometheus/prometheus $PROMETHEUS_VERSION"
  printf '%s\n' '//go:build tools' '' 'package tools' '' 'import (' \
    '	_ "github.com/prometheus/prometheus/cmd/prometheus"' \
    '	_ "github.com/prometheus/prometheus/cmd/promtool"' ')' >"$prom_dir/src/tools.go"
  (cd "$prom_dir/src" && go mod tidy -e >/dev/null 2>&1 || true)
  pv=github.com/prometheus/common/version
  export GOFLAGS="$GOFLAGS -tags=remove_all_sd"
  for b in promtool prometheus; do
    build "$prom_dir/src" "$prom_dir/bin/$b" "github.com/prometheus/prometheus/cmd/$b" \
      "-X $pv.Version=${PROMETHEUS_VERSION#v} -X $pv.Branch=module"
  done
fi
# --- kube-score (the chart's rendered manifests against common best practices) -------------
ksc_dir=$cache/kube-score-$KUBE_SCORE_VERSION
mkdir -p "$ksc_dir/bin"
if [ "$tools" = all ] && [ ! -x "$ksc_dir/bin/kube-score" ]; then
  wrapper "$ksc_dir/src" switchboard.local/kube-score-build \
    "require github.com/zegl/kube-score $KUBE_SCORE_VERSION"
  printf '%s\n' '//go:build tools' '' 'package tools' '' \
    'import _ "github.com/zegl/kube-score/cmd/kube-score"' >"$ksc_dir/src/tools.go"
  (cd "$ksc_dir/src" && go mod tidy -e >/dev/null 2>&1 || true)
  build "$ksc_dir/src" "$ksc_dir/bin/kube-score" github.com/zegl/kube-score/cmd/kube-score
fi
# --- the real node: containerd, the CNI plugins, CoreDNS, pause -----------------------------
ctd_dir=$cache/containerd-$CONTAINERD_VERSION
cni_dir=$cache/cni-plugins-$CNI_PLUGINS_VERSION
dns_dir=$cache/coredns-$COREDNS_VERSION-$(sha256sum "$here/coredns/main.go" | cut -c1-12)
pause_dir=$cache/pause-$(sha256sum "$here/pause/main.go" | cut -c1-12)
if [ "$node" = 1 ]; then
  mkdir -p "$ctd_dir/bin" "$cni_dir/bin" "$dns_dir/bin" "$pause_dir/bin"
  if [ ! -x "$ctd_dir/bin/containerd" ] || [ ! -x "$ctd_dir/bin/containerd-shim-runc-v2" ] ||
     [ ! -x "$ctd_dir/bin/ctr" ]; then
    wrapper "$ctd_dir/src" switchboard.local/containerd-build \
      "require github.com/containerd/containerd/v2 $CONTAINERD_VERSION"
    printf '%s\n' '//go:build tools' '' 'package tools' '' 'import (' \
      '	_ "github.com/containerd/containerd/v2/cmd/containerd"' \
      '	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"' \
      '	_ "github.com/containerd/containerd/v2/cmd/ctr"' ')' >"$ctd_dir/src/tools.go"
    (cd "$ctd_dir/src" && go mod tidy -e >/dev/null 2>&1 || true)
    cv="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
    # No btrfs snapshotter (cgo) and no generated docs; the shim needs no gRPC server (ttrpc).
    (export GOFLAGS="$GOFLAGS -tags=urfave_cli_no_docs,no_btrfs"
     build "$ctd_dir/src" "$ctd_dir/bin/containerd" \
       github.com/containerd/containerd/v2/cmd/containerd "$cv"
     build "$ctd_dir/src" "$ctd_dir/bin/ctr" github.com/containerd/containerd/v2/cmd/ctr "$cv")
    (export GOFLAGS="$GOFLAGS -tags=urfave_cli_no_docs,no_btrfs,no_grpc"
     build "$ctd_dir/src" "$ctd_dir/bin/containerd-shim-runc-v2" \
       github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$cv")
  fi
  cni_plugins="main/bridge main/loopback ipam/host-local meta/portmap"
  need_cni=0
  for p in $cni_plugins; do [ -x "$cni_dir/bin/${p#*/}" ] || need_cni=1; done
  if [ $need_cni = 1 ]; then
    wrapper "$cni_dir/src" switchboard.local/cni-build \
      "require github.com/containernetworking/plugins $CNI_PLUGINS_VERSION"
    { printf '%s\n' '//go:build tools' '' 'package tools' '' 'import ('
      for p in $cni_plugins; do
        printf '\t_ "github.com/containernetworking/plugins/plugins/%s"\n' "$p"; done
      echo ')'; } >"$cni_dir/src/tools.go"
    (cd "$cni_dir/src" && go mod tidy -e >/dev/null 2>&1 || true)
    for p in $cni_plugins; do
      build "$cni_dir/src" "$cni_dir/bin/${p#*/}" \
        "github.com/containernetworking/plugins/plugins/$p"
    done
  fi
  if [ ! -x "$dns_dir/bin/coredns" ]; then
    wrapper "$dns_dir/src" switchboard.local/coredns "require github.com/coredns/coredns $COREDNS_VERSION"
    cp "$here/coredns/main.go" "$dns_dir/src/main.go"
    (cd "$dns_dir/src" && go mod tidy -e >/dev/null 2>&1 || true)
    build "$dns_dir/src" "$dns_dir/bin/coredns" . \
      "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
  fi
  if [ ! -x "$pause_dir/bin/pause" ]; then
    wrapper "$pause_dir/src" switchboard.local/pause
    cp "$here/pause/main.go" "$pause_dir/src/main.go"
    build "$pause_dir/src" "$pause_dir/bin/pause" .
  fi
fi
echo "$k8s_dir/bin"
echo "$etcd_dir/bin"
echo "$helm_dir/bin"
echo "$ks_dir/bin"
echo "$prom_dir/bin"
echo "$ksc_dir/bin"
if [ "$node" = 1 ]; then
  echo "$ctd_dir/bin"
  echo "$cni_dir/bin"
  echo "$dns_dir/bin"
  echo "$pause_dir/bin"
fi
