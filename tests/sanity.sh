#!/usr/bin/env bash
# ansible-test sanity, offline: it needs the collection under
# ansible_collections/<namespace>/<name> and a stand-in for the get-pip bootstrap it
# would otherwise download (the stand-in uses ensurepip and then pip).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GPUFLEET_CACHE:-/var/cache/gpufleet}"
WORK="$CACHE/sanity/ansible_collections/gpufleet/vllm"
# Afresh each time: rsync --files-from leaves files that were removed from the tree since the last run.
rm -rf "$WORK"
mkdir -p "$WORK"
# Copy exactly what git would ship (tracked and new, not ignored files).
(cd "$ROOT" && git ls-files -co --exclude-standard -z) | rsync -a --delete --from0 --files-from=- "$ROOT/" "$WORK/"
(cd "$WORK" && rm -rf .git && git init -q && git add -A >/dev/null)

GET_PIP="$HOME/.ansible/test/cache/get_pip_24_2.py"
mkdir -p "$(dirname "$GET_PIP")"
cat >"$GET_PIP" <<'PY'
# Offline stand-in for get-pip.py used by ansible-test: ensurepip, then pip install the args.
import ensurepip, os, subprocess, sys
ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null; the pip run below must see the machine's pip config.
os.environ.pop("PIP_CONFIG_FILE", None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
# The Python that runs ansible-test (its script's #! line: the tools' venv), whichever version it is.
ansible_test_python="$(sed -n '1s/^#!//p' "$(command -v ansible-test)")"
# shellcheck disable=SC2086 # the #! line may be "/usr/bin/env python3"
python_version="$($ansible_test_python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
cd "$WORK"
ansible-test sanity --venv --python "$python_version" --requirements --exclude wrapper/ --exclude tests/fixtures/ "$@"
