#!/usr/bin/env bash
# Download the wheels the GPU machine (Python 3.12, torch preinstalled) lacks into .whl/ (git-ignored
# through .git/info/exclude), for `run(..., carry=[".whl"])` and scripts/gpu_check.sh.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for pkg in "gymnasium==$(python -c 'import gymnasium; print(gymnasium.__version__)')" \
           "mujoco==$(python -c 'import mujoco; print(mujoco.__version__)')" \
           "tyro==$(python -c 'import tyro; print(tyro.__version__)')" \
           farama-notifications docstring-parser typeguard shtab glfw \
           "minari==$(python -c 'import minari; print(minari.__version__)')"; do  # the rest is in the image (KINDS.md)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl "$pkg"
done
du -sh .whl
