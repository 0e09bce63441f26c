#!/usr/bin/env bash
# 32-bit Raspberry Pi OS bookworm without a Pi: a Debian armhf chroot run by qemu-user, into which livehome's wheel
# is installed the way README.md says (Debian's numpy and PyYAML, a venv that sees them), then `check`,
# `wake-test` and the scores of a few espeak-ng clips compared with this machine's. Not part of the test suite:
# it takes ~20 minutes (debootstrap ~8, pip install ~6 with its source builds, the checks ~4), and emulated CPU
# time and memory mean nothing, so it measures nothing. Run as root on a Debian host:
#   bench/emulated_armhf.sh [CHROOT_DIR]      (default /srv/livehome-armhf; reused when it exists)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=${1:-/srv/livehome-armhf}
PY=${PYTHON:-.venv/bin/python}
log() { printf '\033[1m[armhf]\033[0m %s\n' "$*" >&2; }

command -v debootstrap >/dev/null && [ -e /usr/bin/qemu-arm-static ] || {
    log "installing qemu-user-static, binfmt-support, debootstrap"
    apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
}
update-binfmts --enable qemu-arm >/dev/null 2>&1 || true
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    log "debootstrap armhf bookworm into $ROOT (slow: its second stage runs emulated)"
    debootstrap --arch=armhf --variant=minbase \
        --include=python3,python3-venv,python3-dev,python3-numpy,python3-yaml,gcc,g++,cmake,pkg-config,portaudio19-dev,libsystemd-dev,libffi-dev,ca-certificates \
        bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
fi
mounted=()
for fs in proc sys dev; do
    mountpoint -q "$ROOT/$fs" || { mount --bind "/$fs" "$ROOT/$fs"; mounted+=("$ROOT/$fs"); }
done
cleanup() { for m in "${mounted[@]}"; do umount "$m"; done; }
trap cleanup EXIT
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"  # the host's CAs (a proxy's too)

log "building the wheel and the test audio on this machine"
work=$(mktemp -d)
"$PY" -m pip wheel -q --no-deps --wheel-dir "$work" . 2>/dev/null
PYTHONPATH=$PWD "$PY" - "$work" <<'EOF'
import sys, wave
import numpy as np
from daemon.audio.speech import synthesize
clips = {name: np.frombuffer(bytes(32000) + synthesize(text, 16000, voice=voice) + bytes(48000), np.int16)
         for name, voice, text in [("jarvis en-us", "en-us", "hey jarvis, turn on the kitchen light"),
                                   ("jarvis en-gb", "en-gb", "hey jarvis, turn on the kitchen light"),
                                   ("alexa en-us", "en-us", "alexa, what time is it"),
                                   ("other en-us", "en-us", "the weather is lovely today")]}
np.savez(f"{sys.argv[1]}/clips.npz", **clips)
with wave.open(f"{sys.argv[1]}/jarvis.wav", "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(clips["jarvis en-gb"].tobytes())
EOF
cat > "$work/scores.py" <<'EOF'
import json, sys
import numpy as np
from daemon.wake import available_models, feature_model
from daemon.wake.scorer import WakeWordScorer
clips, out = np.load(sys.argv[1]), {}
for name in clips.files:
    s = WakeWordScorer({w: available_models()[w] for w in ("hey_jarvis", "alexa")},
                       feature_model("melspectrogram"), feature_model("embedding_model"), seed=0)
    pcm = clips[name]
    out[name] = [list(s.predict(pcm[i : i + 1280]).values()) for i in range(0, len(pcm) - 1279, 1280)]
print(json.dumps(out))
EOF
PYTHONPATH=$PWD "$PY" "$work/scores.py" "$work/clips.npz" > "$work/host.json"
rm -rf "$ROOT/root/lh-check" && cp -r "$work" "$ROOT/root/lh-check"

log "pip install into a --system-site-packages venv, emulated"
started=$(date +%s)
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CERT=/etc/ssl/certs/ca-certificates.crt QEMU_CPU=cortex-a7 \
    chroot "$ROOT" /bin/bash -ec '
        cd /root/lh-check
        rm -rf /opt/lh && python3 -m venv --system-site-packages /opt/lh
        /opt/lh/bin/pip install -q --disable-pip-version-check livehome-*.whl
        /opt/lh/bin/pip list 2>/dev/null | grep -i -E "^(numpy|pyyaml|tflite-runtime|cffi|soxr) "
        /opt/lh/bin/livehome init home >/dev/null
        GEMINI_API_KEY=k /opt/lh/bin/livehome check --config home/config.yaml | head -1
        /opt/lh/bin/livehome wake-test --config home/config.yaml jarvis.wav 2> wake-test.stderr
        if [ -s wake-test.stderr ]; then echo "wake-test wrote to stderr:"; cat wake-test.stderr; exit 1; fi
        /opt/lh/bin/python scores.py clips.npz > armhf.json'
log "installed and checked in $(( $(date +%s) - started )) s"
"$PY" - "$work/host.json" "$ROOT/root/lh-check/armhf.json" <<'EOF'
import json, sys
host, arm = (json.load(open(p)) for p in sys.argv[1:])
for name in host:
    diff = max(abs(a - b) for fa, fb in zip(host[name], arm[name], strict=True) for a, b in zip(fa, fb, strict=True))
    print(f"{name:14s} max |score difference| x86_64 vs emulated armv7l: {diff:.2g}")
    assert diff < 1e-4, name
EOF
rm -rf "$work"
