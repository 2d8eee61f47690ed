#!/usr/bin/env bash
# install-deps.sh — install what postino needs to build and to run its
# tests on Debian 12 / Ubuntu, and stop the system Dovecot (the tests start
# private instances of their own).  Installs only what is missing; uses
# sudo when not run as root.  Safe to run again.
set -euo pipefail

PACKAGES=(
  meson ninja-build pkg-config gcc dpkg-dev
  libetpan-dev libsqlite3-dev libcmocka-dev libgnutls28-dev libsasl2-modules
  dovecot-imapd dovecot-pop3d gnutls-bin openssl python3
  clang libclang-rt-14-dev libfuzzer-14-dev valgrind
)

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
else
  SUDO=(sudo)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ] || [ "${POSTINO_FORCE_APT:-}" = 1 ]; then
  echo "installing: ${missing[*]:-(forced)}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
    "${PACKAGES[@]}"
else
  echo "all packages present"
fi

# Installing dovecot starts the system service; the tests do not use it.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  "${SUDO[@]}" systemctl disable --now dovecot >/dev/null 2>&1 || true
elif command -v service >/dev/null; then
  "${SUDO[@]}" service dovecot stop >/dev/null 2>&1 || true
fi
