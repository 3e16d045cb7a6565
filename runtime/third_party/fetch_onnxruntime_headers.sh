#!/bin/sh
# Re-fetch the vendored onnxruntime API headers from Debian trixie's libonnxruntime-dev, without
# touching the system's apt configuration (private sources list, lists and cache in a temp folder).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DEST="$HERE/onnxruntime/include"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/parts" "$WORK/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" > "$WORK/sources.list"
APT="-o Dir::Etc::SourceList=$WORK/sources.list -o Dir::Etc::SourceParts=$WORK/parts \
     -o Dir::State::Lists=$WORK/lists -o Dir::Cache=$WORK/cache"
# shellcheck disable=SC2086
apt-get $APT update >/dev/null
# shellcheck disable=SC2086
(cd "$WORK" && apt-get $APT download libonnxruntime-dev >/dev/null)
dpkg -x "$WORK"/libonnxruntime-dev_*.deb "$WORK/x"
for h in onnxruntime_c_api.h onnxruntime_cxx_api.h onnxruntime_cxx_inline.h onnxruntime_float16.h \
         onnxruntime_lite_custom_op.h; do
    cp "$WORK/x/usr/include/onnxruntime/$h" "$DEST/$h"
done
grep -m1 '#define ORT_API_VERSION' "$DEST/onnxruntime_c_api.h"
