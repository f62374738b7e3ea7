# Python environments for the project's tools, sourced by scripts/emulators
# and scripts/lint-infra. The caller sets $repo and $cache and defines
# die and say.
#
# Each environment lives in $cache/venv-NAME-HASH, keyed by the hash of its
# pinned scripts/requirements/NAME.txt, so a change of pins makes a new one
# and repeated runs start at once.

python313() {
  local candidates=()
  [ -n "${BEMS_PYTHON:-}" ] && candidates+=("$BEMS_PYTHON")
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)/versions/3.13.0/bin/python")
    for v in "$(pyenv root)"/versions/3.13.*; do candidates+=("$v/bin/python"); done
  fi
  candidates+=(python3.13)
  for p in "${candidates[@]}"; do
    if [ -x "$p" ] || command -v "$p" >/dev/null 2>&1; then
      if "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' 2>/dev/null; then
        echo "$p"; return 0
      fi
    fi
  done
  die "Python 3.13 not found (LocalStack 2026.3 and the pinned tools need it). Install it (for example 'pyenv install 3.13.0') or set BEMS_PYTHON to its interpreter."
}

# venv NAME: prints the path of an environment with requirements/NAME.txt installed.
venv() {
  local name=$1 req="$repo/scripts/requirements/$1.txt"
  local key; key=$(sha256sum "$req" | cut -c1-12)
  local dir="$cache/venv-$name-$key"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.complete" ]; then
    local py; py=$(python313)
    say "creating the $name environment in $dir (first run only, about a minute)"
    rm -rf "$dir"
    mkdir -p "$cache"
    "$py" -m venv "$dir" >&2
    if ! "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2; then
      rm -rf "$dir"
      die "pip could not install scripts/requirements/$name.txt: is the package registry (PyPI) reachable?"
    fi
    touch "$dir/.complete"
  fi
  echo "$dir"
}

