#!/usr/bin/env bash
# Builds the images docker-compose.yml runs, on a machine whose Docker engine cannot pull anything:
#   1. a Debian bookworm root with PostgreSQL 15 and Prometheus from Debian's packages, made by
#      debootstrap from this machine's own apt mirror and turned into an image by `docker import`;
#   2. on top of it, stand-ins for the official images: PostgreSQL with the official image's
#      interface (docker/local/postgres) and Prometheus (docker/local/prometheus);
#   3. pgshard from the repo's Dockerfile, with that root as base and a binary built on this host.
# The root is the slow part (debootstrap, ~1.5 min): it is kept under a tag derived from its recipe
# and reused while that tag exists, unless --rebuild, PGSHARD_REBUILD_IMAGES=1 or CI=true asks for a
# clean build. The small images are rebuilt every time (Docker's layer cache makes that quick).
# Every image made here carries the label org.pgshard.local (inherited from the root), so the
# untagged leftovers of earlier builds can be pruned without touching anyone else's images.
#
# Usage: scripts/build-images.sh [--binary PATH] [--rebuild]
#   --binary PATH  the pgshard binary to put in the image (default: `cargo build --release`)
# Prints the variables that point docker-compose.yml at the images, one NAME=value per line:
#   PGSHARD_POSTGRES_IMAGE, PGSHARD_PROMETHEUS_IMAGE, PGSHARD_IMAGE
# Progress goes to stderr. The mirror comes from /etc/apt (override: PGSHARD_DEBIAN_MIRROR).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
suite=bookworm
packages=postgresql-15,prometheus
root_recipe=2 # bump when the way the root is made changes
root_tag="$(printf '%s\n' "$suite" "$packages" "$root_recipe" | sha256sum | cut -c1-12)"
ROOT_IMAGE="pgshard-local/bookworm-root:$root_tag"
POSTGRES_IMAGE="pgshard-local/postgres:15"
PROMETHEUS_IMAGE="pgshard-local/prometheus:debian"
PGSHARD_IMAGE="pgshard-local/pgshard:host"

binary=""
rebuild="${PGSHARD_REBUILD_IMAGES:-}"
[ -z "$rebuild" ] && [ "${CI:-}" = true ] && rebuild=1
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        *) echo "build-images: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed (scripts/install-deps.sh installs it)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running, may this user use it?)"

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)

# The first URI of an apt source that serves $suite, from deb822 .sources files, then from
# one-line .list files.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "uris:"   { $1 = ""; sub(/^ +/, ""); uris = $0 }
            END { if (!found) flush() }
        ' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -e 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }'
    done
}

root="" # the debootstrap target while it exists
cleanup_root() {
    [ -n "$root" ] && [ -d "$root" ] || return 0
    # debootstrap mounts /proc and /sys inside the root while it works: never delete through a mount.
    { findmnt -rn -o TARGET | grep -F "$root/" || true; } | sort -r | while read -r m; do
        "${sudo_cmd[@]}" umount -l "$m" || true
    done
    "${sudo_cmd[@]}" rm -rf --one-file-system "$root"
    root=""
}

build_root() {
    local mirror
    mirror="${PGSHARD_DEBIAN_MIRROR:-$(apt_mirror | head -n1)}"
    [ -n "$mirror" ] || die "no apt source for $suite in /etc/apt; set PGSHARD_DEBIAN_MIRROR"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (scripts/install-deps.sh installs it)"
    root="$(mktemp -d /var/tmp/pgshard-root.XXXXXX)"
    trap cleanup_root EXIT
    say "debootstrap $suite with $packages from $mirror (about 1.5 minutes)"
    if ! "${sudo_cmd[@]}" debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1; then
        tail -n 30 "$root.log" >&2
        die "debootstrap failed (full log: $root.log)"
    fi
    rm -f "$root.log"
    # What containers never use: downloaded packages, apt lists, docs, and the cluster Debian's
    # postgresql package creates (the image's entry point makes its own in PGDATA).
    "${sudo_cmd[@]}" rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info \
        "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15
    say "docker import $ROOT_IMAGE"
    "${sudo_cmd[@]}" tar -C "$root" --numeric-owner -cf - . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            --change 'LABEL org.pgshard.local=true' \
            --message "debootstrap $suite $packages" - "$ROOT_IMAGE" >/dev/null
    cleanup_root
    trap - EXIT
}

build() { # tag, context, extra docker build args...
    local tag="$1" context="$2"
    shift 2
    say "docker build $tag"
    local log
    log="$(mktemp)"
    if ! docker build -q -t "$tag" "$@" "$context" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "docker build of $tag failed"
    fi
    rm -f "$log"
}

if [ -n "$rebuild" ] || ! docker image inspect "$ROOT_IMAGE" >/dev/null 2>&1; then
    # Children first, so the old root is deleted rather than left untagged (unless a container
    # still uses it).
    for tag in "$PGSHARD_IMAGE" "$PROMETHEUS_IMAGE" "$POSTGRES_IMAGE" "$ROOT_IMAGE"; do
        docker image rm "$tag" >/dev/null 2>&1 || true
    done
    build_root
else
    say "reusing $ROOT_IMAGE"
fi

build "$POSTGRES_IMAGE" "$repo/docker/local/postgres" --build-arg "BASE_IMAGE=$ROOT_IMAGE"
build "$PROMETHEUS_IMAGE" "$repo/docker/local/prometheus" --build-arg "BASE_IMAGE=$ROOT_IMAGE"

if [ -z "$binary" ]; then
    say "cargo build --release"
    (cd "$repo" && cargo build --release --locked >&2)
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/pgshard"
fi
[ -x "$binary" ] || die "no pgshard binary at $binary"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
# Debug info is most of a debug build's size; the image does not need it.
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$context/pgshard" "$binary"
else
    cp "$binary" "$context/pgshard"
fi
build "$PGSHARD_IMAGE" "$context" -f "$repo/Dockerfile" \
    --build-arg "RUST_IMAGE=$ROOT_IMAGE" --build-arg "BASE_IMAGE=$ROOT_IMAGE" \
    --build-arg PGSHARD_BINARY=pgshard

# What earlier builds left untagged (replaced binaries, the Dockerfile's build stage).
docker image prune -f --filter label=org.pgshard.local=true >/dev/null

echo "PGSHARD_POSTGRES_IMAGE=$POSTGRES_IMAGE"
echo "PGSHARD_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE"
echo "PGSHARD_IMAGE=$PGSHARD_IMAGE"
