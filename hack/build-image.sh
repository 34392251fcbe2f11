#!/usr/bin/env bash
# Build the project's OCI images without a Docker engine or a registry, into the cache:
#   switchboard   Debian $DEBIAN_SUITE from Debian's packages (mmdebstrap), python3.11, a venv
#                 in /opt/switchboard with the project pip-installed (no test kit), uid 65532;
#                 the same image the Dockerfile describes (tests/image/test_image.py compares).
#   pause         the pod sandbox (hack/pause), one static binary.
#   coredns       cluster DNS (hack/coredns), one static binary.
# Each is an OCI archive (`oci-archive:` for skopeo) named by what it was built from, so a change
# of the sources builds a new one and an unchanged tree is a no-op. Needs root (mmdebstrap, the
# chroot) and Debian's mmdebstrap and umoci; hack/build-binaries.sh builds pause and coredns.
# Prints "NAME REF ARCHIVE" per image on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=versions.env
. "$here/versions.env"
cache=${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}
out=$cache/images
log() { printf '[build-image] %s\n' "$*" >&2; }
for tool in mmdebstrap umoci; do
  command -v $tool >/dev/null || { log "$tool is missing: apt-get install mmdebstrap umoci"; exit 1; }
done
mkdir -p "$out"
version=$(sed -nE 's/^version = "(.*)"/\1/p' "$repo/pyproject.toml" | head -1)
repository=ghcr.io/switchboard-dev/switchboard  # the chart's default image.repository

# pack NAME TAG ROOTFS ARCHIVE CONFIG... : one layer from ROOTFS, image config, an OCI archive.
pack() {
  local name=$1 tag=$2 rootfs=$3 archive=$4; shift 4
  local layout
  layout=$(mktemp -d "$out/.layout.XXXXXX")
  umoci init --layout "$layout/oci"
  umoci new --image "$layout/oci:$tag"
  # --rootless: keep the files' owners as they are in ROOTFS (root) without a mapping.
  umoci insert --image "$layout/oci:$tag" --history.created_by "hack/build-image.sh $name" \
    "$rootfs" /
  umoci config --image "$layout/oci:$tag" --author "switchboard hack/build-image.sh" \
    --created 1970-01-01T00:00:00Z "$@"
  umoci gc --layout "$layout/oci"
  tar -C "$layout/oci" -cf "$archive.tmp.$$" .
  mv "$archive.tmp.$$" "$archive"
  rm -rf "$layout"
}

# --- switchboard ------------------------------------------------------------------------------
# What the image is built from, by content (edits not yet committed included).
src_hash=$(cd "$repo" && find pyproject.toml README.md operator gateway contract hack/build-image.sh \
             hack/versions.env -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
           sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
sb_archive=$out/switchboard-$version-$src_hash.oci.tar
if [ ! -f "$sb_archive" ]; then
  t0=$SECONDS
  work=$(mktemp -d "$out/.switchboard.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # Wheels on this machine (its pip knows the package index and its CA); the chroot installs
  # from them with no network at all.
  log "wheels of the project and its dependencies ..."
  python3 -m pip wheel -q --wheel-dir "$work/wheels" "$repo" >&2
  log "Debian $DEBIAN_SUITE with python3.11 (mmdebstrap) ..."
  mmdebstrap --quiet --variant=essential --include=python3.11,python3.11-venv,ca-certificates,netbase \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "$DEBIAN_SUITE" "$work/rootfs" >&2
  root=$work/rootfs
  chroot "$root" python3.11 -m venv /opt/switchboard
  mkdir -p "$root/tmp/wheels"
  cp "$work/wheels"/*.whl "$root/tmp/wheels/"
  env -u PIP_FIND_LINKS chroot "$root" /opt/switchboard/bin/pip install -q --no-index --no-cache-dir --no-compile \
    --find-links /tmp/wheels switchboard
  chroot "$root" /opt/switchboard/bin/python -m compileall -q /opt/switchboard/lib
  rm -rf "$root/tmp/wheels" "$root/dev"/* "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/* \
    "$root/var/log"/*.log "$root/var/cache/ldconfig/aux-cache"
  # The non-root user every pod runs as, with a passwd entry (kopf asks getpass.getuser()).
  echo 'switchboard:x:65532:65532:switchboard:/nonexistent:/usr/sbin/nologin' >>"$root/etc/passwd"
  echo 'switchboard:x:65532:' >>"$root/etc/group"
  pack switchboard "$version" "$root" "$sb_archive" \
    --config.user 65532:65532 \
    --config.env PATH=/opt/switchboard/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env PYTHONUNBUFFERED=1 --config.env PYTHONDONTWRITEBYTECODE=1 \
    --config.cmd switchboard-operator --config.cmd --all-namespaces \
    --config.label org.opencontainers.image.source=https://github.com/switchboard-dev/switchboard \
    --config.label org.opencontainers.image.licenses=Apache-2.0 \
    --config.label org.opencontainers.image.version="$version"
  rm -rf "$work"
  trap - EXIT
  log "built $(basename "$sb_archive") in $((SECONDS - t0)) s ($(du -m "$sb_archive" | cut -f1) MiB)"
fi
echo "switchboard $repository:$version $sb_archive"

# --- pause and coredns: one static binary each ------------------------------------------------
bins=$(SWITCHBOARD_TOOLS=cluster bash "$here/build-binaries.sh")
for name in pause coredns; do
  bin=
  for d in $bins; do if [ -x "$d/$name" ]; then bin=$d/$name; break; fi; done
  [ -n "$bin" ] || { log "$name was not built (SWITCHBOARD_NODE=0?)"; exit 1; }
  tag=$(basename "$(dirname "$(dirname "$bin")")")   # its cache directory: name-version-hash
  tag=${tag#"$name"-}
  archive=$out/$name-$tag.oci.tar
  if [ ! -f "$archive" ]; then
    work=$(mktemp -d "$out/.$name.XXXXXX")
    install -D -m 0755 "$bin" "$work/rootfs/$name"
    pack "$name" "$tag" "$work/rootfs" "$archive" --config.entrypoint "/$name" \
      --config.user 65532:65532
    rm -rf "$work"
  fi
  echo "$name localhost/switchboard/$name:$tag $archive"
done
