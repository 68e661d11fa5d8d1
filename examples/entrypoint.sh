#!/bin/sh
# Container entrypoint: mount $ARTIFACTFS_REMOTE at $ARTIFACTFS_MOUNTPOINT
# (default /workspace), run the given command inside it, and unmount when the
# command ends: on success, on failure, and on SIGTERM/SIGINT/SIGHUP (which
# are passed on to the command first). Exits with the command's status.
#
# Optional: ARTIFACTFS_REF (branch, tag or commit), ARTIFACTFS_ROOT (state
# directory), ARTIFACTFS_OPTIONS (extra `artifactfs mount` options).
set -eu

: "${ARTIFACTFS_REMOTE:?set ARTIFACTFS_REMOTE to the Git remote to mount}"
mountpoint="${ARTIFACTFS_MOUNTPOINT:-/workspace}"
[ "$#" -gt 0 ] || set -- sh
child=""

finish() {
    status=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    cd /
    if ! artifactfs unmount "$mountpoint" >/dev/null 2>&1; then
        fusermount3 -u -z "$mountpoint" 2>/dev/null || true
    fi
    exit "$status"
}

forward() {
    if [ -n "$child" ]; then
        kill -"$1" "$child" 2>/dev/null || true
    fi
}

trap finish EXIT
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

mkdir -p "$mountpoint"
# ARTIFACTFS_OPTIONS is a list of options: split it on purpose.
# shellcheck disable=SC2086
artifactfs mount ${ARTIFACTFS_OPTIONS:-} "$ARTIFACTFS_REMOTE" "$mountpoint"
cd "$mountpoint"

# Run the command in the background so this shell can receive signals while
# it waits; fd 3 hands it the real stdin (a background job would get /dev/null).
exec 3<&0
"$@" <&3 3<&- &
child=$!
exec 3<&-
while :; do
    status=0
    wait "$child" || status=$?
    # wait also returns when a trapped signal arrives: keep waiting until the command is gone.
    kill -0 "$child" 2>/dev/null || break
done
child=""
exit "$status"
