#!/usr/bin/env bash
# Install Field Station as a systemd service, from the checkout this script is in.
#   sudo scripts/install.sh                      install or update (run it again any time: it is idempotent)
#   sudo scripts/install.sh --lat 42.45 --lon -76.48   also set the station's location (BirdNET's range filter)
#   sudo scripts/install.sh --uninstall          remove the unit, the code and its venv; keep config and data
#   sudo scripts/install.sh --uninstall --purge  also remove config, credentials, data, models and the user
#   scripts/install.sh --prefix DIR [...]        everything under DIR (a scratch root for tests):
#                                                no apt, no systemctl; DIR's venv is not relocatable
# PYTHON: the interpreter the venv is made from (default /usr/bin/python3: the service must be able
# to read it, and ProtectHome=yes hides interpreters under /home and /root).
set -euo pipefail
umask 022

NAME=field-station
SRC="$(cd "$(dirname "$0")/.." && pwd)"
CODE=/opt/$NAME
STATE=/var/lib/$NAME
CONFIG_DIR=/etc/$NAME
UNIT=/etc/systemd/system/$NAME.service
WANTS=/etc/systemd/system/multi-user.target.wants/$NAME.service
RUNTIME_PACKAGES=(python3-venv libportaudio2 libsndfile1 ffmpeg)

root=""
action=install
purge=no
lat=""
lon=""

say() { echo "$NAME: $*"; }
die() { echo "$NAME: error: $*" >&2; exit 1; }

parse_args() {
  while (( $# )); do
    case "$1" in
      --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; root="$(realpath -m "$2")"; shift ;;
      --prefix=*) root="$(realpath -m "${1#*=}")" ;;
      --uninstall) action=uninstall ;;
      --purge) purge=yes ;;
      --lat) [[ $# -ge 2 ]] || die "--lat needs a latitude"; lat="$2"; shift ;;
      --lat=*) lat="${1#*=}"; [[ -n "$lat" ]] || die "--lat needs a latitude" ;;
      --lon) [[ $# -ge 2 ]] || die "--lon needs a longitude"; lon="$2"; shift ;;
      --lon=*) lon="${1#*=}"; [[ -n "$lon" ]] || die "--lon needs a longitude" ;;
      -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift
  done
  [[ "$purge" == no || "$action" == uninstall ]] || die "--purge only goes with --uninstall"
  [[ -z "$lat$lon" || ( -n "$lat" && -n "$lon" ) ]] || die "--lat and --lon go together"
  [[ -z "$lat" ]] || in_range "$lat" -90 90 || die "--lat must be a number from -90 to 90, not '$lat'"
  [[ -z "$lon" ]] || in_range "$lon" -180 180 || die "--lon must be a number from -180 to 180, not '$lon'"
  [[ -z "$lat" || "$action" == install ]] || die "--lat and --lon go with an install, not --uninstall"
  [[ "$root" != / ]] || root=""
  [[ $(id -u) -eq 0 ]] || die "run as root (sudo $0 $*)"
}

in_range() {  # VALUE LOW HIGH: a plain decimal number within [LOW, HIGH] (no leading zero: YAML reads 010 as octal)
  [[ "$1" =~ ^-?(0|[1-9][0-9]*)(\.[0-9]+)?$ ]] && awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(v >= lo && v <= hi) }'
}

# systemd manages the real system only when it runs as PID 1, and never a --prefix root.
systemd_running() { [[ -z "$root" && -d /run/systemd/system ]]; }

# Ids come from the root's own account files, so ownership is right inside a --prefix root too.
account_id() {  # passwd|group NAME
  awk -F: -v name="$2" '$1 == name { print $3; found = 1 } END { exit !found }' "$root/etc/$1"
}

user_tool() {  # useradd|groupadd|usermod|userdel ARGS...: against the root's account files
  if [[ -n "$root" ]]; then "$1" --prefix "$root" "${@:2}"; else "$@"; fi
}

install_packages() {
  if [[ -n "$root" ]]; then say "system packages: skipped (--prefix)"; return; fi
  if ! command -v dpkg-query >/dev/null; then
    say "system packages: not Debian; make sure ${RUNTIME_PACKAGES[*]} (or their equivalents) are installed"
    return
  fi
  local missing=() package
  for package in "${RUNTIME_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if (( ${#missing[@]} == 0 )); then say "system packages: already installed"; return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  say "system packages: installed ${missing[*]}"
}

ensure_account_files() {
  [[ -n "$root" ]] || return 0
  mkdir -p "$root/etc"
  local file
  for file in passwd group shadow gshadow; do
    [[ -e "$root/etc/$file" ]] || install -m "$([[ $file == *sha* ]] && echo 0640 || echo 0644)" /dev/null "$root/etc/$file"
  done
}

ensure_user() {
  ensure_account_files
  if ! account_id group audio >/dev/null; then
    user_tool groupadd --system audio
    say "group audio: created"
  fi
  if account_id passwd "$NAME" >/dev/null; then
    user_tool usermod --append --groups audio "$NAME"
    say "user $NAME: exists, in group audio"
  else
    local own_group=(--user-group)
    # A group left behind by an earlier userdel would make --user-group fail.
    if account_id group "$NAME" >/dev/null; then own_group=(--gid "$NAME"); fi
    user_tool useradd --system "${own_group[@]}" --groups audio --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin --comment "Field Station" "$NAME"
    say "user $NAME: created (system user, groups $NAME and audio, home $STATE)"
  fi
}

copy_code() {
  local dest="$root$CODE" item
  if [[ "$(realpath -m "$dest")" == "$SRC" ]]; then say "code: already at $CODE"; return; fi
  mkdir -p "$dest"
  # Only what the daemon's install needs: never .venv, .git, data or model weights.
  for item in pyproject.toml README.md config.yaml station systemd scripts; do
    rm -rf "${dest:?}/$item"
    cp -R "$SRC/$item" "$dest/$item"
  done
  find "$dest/station" -name __pycache__ -prune -exec rm -rf {} +
  say "code: copied $SRC to $CODE"
}

choose_python() {
  local python="${PYTHON:-/usr/bin/python3}" real
  command -v "$python" >/dev/null || python=python3
  real="$(realpath "$(command -v "$python")")"
  case "$real" in
    /home/*|/root/*|/run/user/*) die "$real is hidden from the service by ProtectHome=yes: use a system Python (PYTHON=/usr/bin/python3)" ;;
  esac
  "$python" -c "import ensurepip, venv" 2>/dev/null || die "$python cannot make a venv: apt-get install python3-venv"
  echo "$python"
}

make_venv() {
  local venv="$root$CODE/.venv" log python
  python="$(choose_python)"
  if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "" 2>/dev/null; then
    say "venv: reusing $CODE/.venv"
  else
    rm -rf "$venv"
    "$python" -m venv "$venv"
    say "venv: created $CODE/.venv with $("$venv/bin/python" --version)"
  fi
  log="$(mktemp)"
  # Not editable: pip compiles the .pyc files now, which the service could not write under ProtectSystem=strict.
  if ! "$venv/bin/python" -m pip install --quiet --upgrade "$root$CODE" >"$log" 2>&1; then
    tail -n 20 "$log" >&2; rm -f "$log"
    die "pip could not install the station into $CODE/.venv (output above)"
  fi
  rm -rf "$log" "$root$CODE/build" "$root$CODE"/*.egg-info
  say "venv: installed $("$venv/bin/station" --version) and the daemon's dependencies (no extras)"
}

make_dirs() {
  local gid uid
  uid="$(account_id passwd "$NAME")"; gid="$(account_id group "$NAME")"
  install -d -m 0750 -o "$uid" -g "$gid" "$root$STATE"
  install -d -m 0750 -o 0 -g "$gid" "$root$STATE/models" "$root$CONFIG_DIR"
  install -d -m 0700 -o 0 -g 0 "$root$CONFIG_DIR/credentials"
  say "dirs: $STATE (data, $NAME only), $STATE/models and $CONFIG_DIR (root-owned, $NAME may read), $CONFIG_DIR/credentials (root only)"
}

# Models live with the data, not the code: an uninstall or update keeps a model the user built
# (BirdNET's weights cannot be redistributed), and root owns them so the service only reads them.
copy_models() {
  local gid folder name dest copied=()
  gid="$(account_id group "$NAME")"
  for folder in "$SRC"/models/*/; do
    [[ -f "$folder/manifest.json" ]] || continue
    name="$(basename "$folder")"; dest="$root$STATE/models/$name"
    if [[ -e "$dest" ]]; then say "model $name: kept the one in $STATE/models"; continue; fi
    cp -R "$folder" "$dest.partial"
    chown -R "0:$gid" "$dest.partial"
    find "$dest.partial" -type d -exec chmod 0750 {} + -o -type f -exec chmod 0640 {} +
    mv "$dest.partial" "$dest"
    copied+=("$name")
  done
  if (( ${#copied[@]} )); then say "models: copied ${copied[*]} to $STATE/models"
  elif [[ ! -d "$SRC/models" ]]; then say "models: none in $SRC/models to copy"; fi
}

install_config() {
  local config="$root$CONFIG_DIR/config.yaml" gid
  gid="$(account_id group "$NAME")"
  if [[ -e "$config" ]]; then
    say "config: kept $CONFIG_DIR/config.yaml"
  else
    # Relative paths resolve against the config's folder: point them at the state directory.
    sed -E -e "s#^(  path: +)models/#\\1$STATE/models/#" \
           -e "s#^(  database: +)data/station\\.db#\\1$STATE/station.db#" "$SRC/config.yaml" > "$config.new"
    chown "0:$gid" "$config.new"; chmod 0640 "$config.new"
    mv "$config.new" "$config"
    say "config: wrote $CONFIG_DIR/config.yaml (model and database under $STATE)"
  fi
}

# Edits the two values where config.yaml has them (`  lat:` under `location:`, comments kept), reads them
# back, and only then replaces the file. A config shaped otherwise is left as it is, with a warning.
set_location() {
  [[ -n "$lat" ]] || return 0
  local config="$root$CONFIG_DIR/config.yaml"
  sed -E -e "s/^(  lat:) *[^ #]*( +#.*| *)$/\\1 $lat\\2/" -e "s/^(  lon:) *[^ #]*( +#.*| *)$/\\1 $lon\\2/" \
    "$config" > "$config.new"
  chown --reference="$config" "$config.new"; chmod --reference="$config" "$config.new"
  if ! "$root$CODE/.venv/bin/python" -c 'import sys; from station.config import load_settings
where = load_settings(sys.argv[1], check=False).location
sys.exit((where.lat, where.lon) != (float(sys.argv[2]), float(sys.argv[3])))' "$config.new" "$lat" "$lon" 2>/dev/null; then
    rm -f "$config.new"
    say "location: NOT set: $CONFIG_DIR/config.yaml has no '  lat:' and '  lon:' lines under location: as config.yaml has, or does not load; set location.lat and location.lon there by hand"
    return 0
  fi
  mv "$config.new" "$config"
  say "location: lat $lat, lon $lon in $CONFIG_DIR/config.yaml (it turns on BirdNET's range filter)"
}

# The first complaint of `station config check` (as ExecStartPre= runs it), or nothing when it passes.
config_problem() {
  local config="$root$CONFIG_DIR/config.yaml" checked output
  checked="$config"
  if [[ -n "$root" ]]; then
    # Its absolute paths name the real system: check a copy that names the same places in the root.
    checked="$root$CONFIG_DIR/.config.check.yaml"
    sed -e "s#$STATE/#$root$STATE/#g" -e "s#$CONFIG_DIR/#$root$CONFIG_DIR/#g" "$config" > "$checked"
  fi
  if ! output="$("$root$CODE/.venv/bin/station" config check --config "$checked" --db "$root$STATE/station.db" \
                  2>&1 >/dev/null)"; then
    output="${output%%$'\n'*}"
    output="${output#station: error: }"
    if [[ -n "$root" ]]; then output="${output//"$checked"/"$CONFIG_DIR/config.yaml"}"; output="${output//"$root"/}"; fi
    echo "$output"
  fi
  [[ "$checked" == "$config" ]] || rm -f "$checked"
}

# The model folder config.yaml points at, or nothing when it is not there yet.
model_folder() {
  local path
  path="$("$root$CODE/.venv/bin/python" -c 'import sys; from station.config import load_settings
print(load_settings(sys.argv[1]).model.path)' "$root$CONFIG_DIR/config.yaml" 2>/dev/null)" || return 0
  [[ "$path" == "$root"/* ]] || path="$root$path"
  [[ -f "$path/manifest.json" ]] && echo "${path#"$root"}"
  return 0
}

install_unit() {
  mkdir -p "$root$(dirname "$UNIT")" "$root$(dirname "$WANTS")"
  install -m 0644 "$SRC/systemd/$NAME.service" "$root$UNIT"
  say "unit: installed $UNIT"
  local model problem
  model="$(model_folder)"
  if [[ -n "$model" ]]; then say "model: $model (model.path in $CONFIG_DIR/config.yaml)"
  else say "model: none at model.path in $CONFIG_DIR/config.yaml yet: put a model folder in $STATE/models (README \"Models\")"; fi
  problem="$(config_problem)"
  if [[ -z "$problem" ]]; then say "config: station config check passes"
  else say "config: not ready to start: $problem"; fi
  if systemd_running; then
    systemctl daemon-reload
    systemctl enable --quiet "$NAME.service"
    if [[ -z "$problem" ]]; then
      # --no-block: READY=1 waits for the model and the first audio block, which may take minutes.
      systemctl restart --no-block "$NAME.service"
      say "service: enabled and (re)starting; follow it with: journalctl -u $NAME -f"
    else
      say "service: enabled, not started (config not ready); once it is: systemctl start $NAME"
    fi
  else
    ln -sfn "$UNIT" "$root$WANTS"
    if [[ -n "$root" ]]; then
      say "service: enabled by symlink in $root (--prefix: no systemctl)"
    else
      say "service: enabled by symlink; systemd is not running, so nothing was started"
    fi
  fi
}

say_credentials() {
  say "secrets: the MQTT password goes in $CONFIG_DIR/credentials/mqtt_password (root only, mode 0600), e.g."
  say "  systemd-ask-password 'MQTT password:' | install -m 0600 /dev/stdin $CONFIG_DIR/credentials/mqtt_password"
  say "  then: systemctl restart $NAME (the Xeno-Canto key, if any, goes in .../credentials/xc_key the same way)"
}

do_install() {
  install_packages
  ensure_user
  copy_code
  make_venv
  make_dirs
  copy_models
  install_config
  set_location
  install_unit
  say_credentials
  say "installed${root:+ under $root}"
}

remove() {  # PATH DESCRIPTION
  if [[ -e "$root$1" || -L "$root$1" ]]; then rm -rf -- "$root$1"; say "removed $2"
  else say "$2: not there"; fi
}

do_uninstall() {
  if systemd_running && [[ -e "$UNIT" ]]; then
    systemctl disable --now --quiet "$NAME.service" || true
    say "service: stopped and disabled"
  fi
  remove "$WANTS" "$WANTS"
  remove "$UNIT" "$UNIT"
  if systemd_running; then systemctl daemon-reload; fi
  if [[ -e "$root$CODE/.git" ]]; then say "kept $CODE: it is a git checkout, not an install (remove it yourself)"
  else remove "$CODE" "$CODE (code and venv)"; fi
  if [[ "$purge" == yes ]]; then
    remove "$CONFIG_DIR" "$CONFIG_DIR (config and credentials)"
    remove "$STATE" "$STATE (database, clips and models)"
    if account_id passwd "$NAME" >/dev/null 2>&1; then user_tool userdel "$NAME"; say "user $NAME: removed"
    else say "user $NAME: not there"; fi
    # userdel keeps the user's own group where login.defs lacks USERGROUPS_ENAB (a bare --prefix root).
    if account_id group "$NAME" >/dev/null 2>&1; then user_tool groupdel "$NAME"; say "group $NAME: removed"; fi
  else
    say "kept $CONFIG_DIR, $STATE and user $NAME (--purge removes them)"
  fi
  say "uninstalled${root:+ from $root}"
}

main() {
  parse_args "$@"
  if [[ "$action" == uninstall ]]; then do_uninstall; else do_install; fi
}

main "$@"
