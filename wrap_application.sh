#!/bin/sh
# wrap_application.sh: run the user's command between datarun sidecars (see sidecar/PROTOCOL.md).
#
#   wrap_application.sh -c <coord_dir> -b <fuse|postgres> [-b ...] [-r secs] [-u secs] [-h secs] -- <app> <args>
#
# POSIX sh only (runs in busybox). It waits until every named sidecar is ready, runs the app with
# signals forwarded, ALWAYS tells the sidecars the app has ended (success or failure), waits for
# their result, and exits with:
#   the app's exit code if the app failed;
#   0   app and every upload succeeded, or a run cache hit reused an identical run's outputs;
#   75  the app succeeded but an upload failed (the result files say which output);
#   76  a sidecar failed or never became ready (nothing was run);
#   77  a sidecar stopped answering (no heartbeat) or did not report within the upload timeout;
#   64  bad usage of this script.
set -u

usage() {
  echo "usage: $0 -c <coord_dir> -b <sidecar> [-b <sidecar>...] [-r ready_timeout] [-u upload_timeout]" \
       "[-h heartbeat_timeout] -- <app> [args...]" >&2
  exit 64
}

coord=""
sidecars=""
ready_timeout="${DATARUN_READY_TIMEOUT:-600}"
upload_timeout="${DATARUN_UPLOAD_TIMEOUT:-0}"   # 0: no limit, the heartbeat still catches a dead sidecar
heartbeat_timeout="${DATARUN_HEARTBEAT_TIMEOUT:-30}"

while [ $# -gt 0 ]; do
  case "$1" in
    -c) [ $# -ge 2 ] || usage; coord="$2"; shift 2 ;;
    -b) [ $# -ge 2 ] || usage
        case "$2" in
          fuse|postgres) sidecars="$sidecars $2" ;;
          *) echo "wrap_application.sh: unknown sidecar \`$2\` (use fuse or postgres)" >&2; exit 64 ;;
        esac
        shift 2 ;;
    -r) [ $# -ge 2 ] || usage; ready_timeout="$2"; shift 2 ;;
    -u) [ $# -ge 2 ] || usage; upload_timeout="$2"; shift 2 ;;
    -h) [ $# -ge 2 ] || usage; heartbeat_timeout="$2"; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[ -n "$coord" ] && [ -n "$sidecars" ] && [ $# -gt 0 ] || usage

log() { echo "wrap_application.sh: $*" >&2; }
now() { date +%s; }
nap() { sleep 0.1 2>/dev/null || sleep 1; }

# Atomic write: readers never see a half-written marker.
put() { printf '%s\n' "$2" > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"; }

# A sidecar writes epoch seconds into <kind>/heartbeat every few seconds while alive.
alive() {
  hb="$coord/$1/heartbeat"
  [ -f "$hb" ] || return 0          # not started yet: the ready timeout covers that
  beat=$(cat "$hb" 2>/dev/null || echo 0)
  case "$beat" in ''|*[!0-9]*) beat=0 ;; esac
  [ $(( $(now) - beat )) -le "$heartbeat_timeout" ]
}

mkdir -p "$coord/app" || { log "cannot create coordination folder \`$coord\`"; exit 76; }
put "$coord/app/heartbeat" "$(now)"
# The command, one word per line, for the provenance of the output bundles.
printf '%s\n' "$@" > "$coord/app/command.tmp.$$" && mv -f "$coord/app/command.tmp.$$" "$coord/app/command"

# 1. Wait until every sidecar is ready, or one of them failed, crashed, or timed out.
for kind in $sidecars; do
  deadline=$(( $(now) + ready_timeout ))
  while [ ! -f "$coord/$kind/ready" ]; do
    if [ -f "$coord/$kind/failed" ]; then
      log "sidecar \`$kind\` failed before the app started: $(cat "$coord/$kind/failed")"
      put "$coord/initupload" "76"
      exit 76
    fi
    if ! alive "$kind"; then
      log "sidecar \`$kind\` stopped sending heartbeats before it was ready"
      put "$coord/initupload" "76"
      exit 76
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      log "sidecar \`$kind\` not ready after ${ready_timeout}s; raise -r or check its logs"
      put "$coord/initupload" "76"
      exit 76
    fi
    put "$coord/app/heartbeat" "$(now)"
    nap
  done
done

# 2. Run the app; forward signals so a pod deletion stops it and still reaches step 3. The fuse
#    sidecar's `skip` marker (a run cache hit, written before `ready`) means the outputs of an
#    identical earlier run are already in place: the app is not started, and its code is 0.
app_pid=""
skip="$coord/fuse/skip"
case " $sidecars " in *" fuse "*) ;; *) skip="" ;; esac
if [ -n "$skip" ] && [ -f "$skip" ]; then
  log "$(head -n 1 "$skip")"
  code=0
else
  forward() { [ -n "$app_pid" ] && kill "-$1" "$app_pid" 2>/dev/null; }
  trap 'forward TERM' TERM
  trap 'forward INT' INT
  trap 'forward HUP' HUP
  "$@" &
  app_pid=$!
  put "$coord/app/pid" "$app_pid"
  # The heartbeat lets sidecars tell a slow app from a dead wrapper.
  ( while kill -0 "$app_pid" 2>/dev/null; do put "$coord/app/heartbeat" "$(now)"; sleep 2; done ) &
  beat_pid=$!
  while :; do
    wait "$app_pid"
    code=$?
    kill -0 "$app_pid" 2>/dev/null || break   # wait was interrupted by a trapped signal: wait again
  done
  kill "$beat_pid" 2>/dev/null
  trap - TERM INT HUP
fi

# 3. Always tell the sidecars the app has ended, with its exit code (datamon's `initupload`).
put "$coord/initupload" "$code"
[ -n "$app_pid" ] && log "app exited with $code; waiting for:$sidecars"

# 4. Wait for each sidecar's result.
result=0
for kind in $sidecars; do
  deadline=0
  [ "$upload_timeout" -gt 0 ] && deadline=$(( $(now) + upload_timeout ))
  while [ ! -f "$coord/$kind/uploaddone" ]; do
    put "$coord/app/heartbeat" "$(now)"
    if ! alive "$kind"; then
      log "sidecar \`$kind\` stopped sending heartbeats before reporting its result"
      result=77
      break
    fi
    if [ "$deadline" -gt 0 ] && [ "$(now)" -ge "$deadline" ]; then
      log "sidecar \`$kind\` did not report within ${upload_timeout}s"
      result=77
      break
    fi
    nap
  done
  if [ -f "$coord/$kind/uploaddone" ]; then
    status=$(head -n 1 "$coord/$kind/uploaddone")
    if [ "$status" != "ok" ]; then
      log "sidecar \`$kind\` reports: $status (details in $coord/$kind/result.json)"
      [ "$result" -eq 0 ] && result=75
    fi
  fi
done

if [ "$code" -ne 0 ]; then
  exit "$code"
fi
exit "$result"
