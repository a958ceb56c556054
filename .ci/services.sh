#!/usr/bin/env bash
# Install the external tools some tests use: Orthanc with its DICOMweb plugin (tests/test_pacs.py
# starts its own private Orthanc on 127.0.0.1) and dicom3tools (dciodvfy).  Idempotent; never starts
# the Orthanc system service; prints one line; always exits 0 (the tests skip when the tools are absent).
set -u
PKGS="orthanc orthanc-dicomweb dicom3tools"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
missing="${missing# }"

if [ -z "$missing" ]; then
    echo "services.sh: $PKGS already installed; nothing to do"
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "services.sh: missing $missing; not root with apt-get, so not installed (the tests that need them skip)"
    exit 0
fi

# keep the package scripts from starting the Orthanc service (policy-rc.d exit 101 = action forbidden)
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp -t invivo-services.XXXXXX)
status="installed $missing"
if ! timeout 300 apt-get update -q >"$log" 2>&1; then
    status="apt-get update failed (see $log); $missing not installed"
elif ! timeout 600 apt-get install -y -q --no-install-recommends $missing >>"$log" 2>&1; then
    status="apt-get install $missing failed (see $log); the tests that need them skip"
else
    rm -f "$log"
fi
if [ "$made_policy" = 1 ]; then
    rm -f "$policy"
fi
echo "services.sh: $status"
exit 0
