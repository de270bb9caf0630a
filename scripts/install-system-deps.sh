#!/usr/bin/env bash
# System packages the test suite needs: libvirt (daemon, QEMU driver, headers for the
# Python binding), QEMU for the real guest, busybox for its initramfs, InfluxDB 1.x and
# promtool as real consumers of the output, Go and govmomi for the vCenter simulator.
set -euo pipefail
# Usage: install-system-deps.sh [run|test]   (run: only what `make run` needs)
RUN_PKGS="libvirt-dev pkg-config gcc"
TEST_PKGS="$RUN_PKGS libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
qemu-system-x86 busybox-static cpio influxdb influxdb-client prometheus
golang-go golang-github-vmware-govmomi-dev"
case "${1:-test}" in
  run) PKGS=$RUN_PKGS ;;
  test) PKGS=$TEST_PKGS ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# The test suite downloads the guest kernel package with apt-get download: it needs the lists.
lists_empty=0
if [ "${1:-test}" = test ] && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then lists_empty=1; fi
if [ -z "$missing" ] && [ $lists_empty = 0 ]; then echo "system packages: all present"; exit 0; fi
if [ -z "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq; exit 0; fi
  echo "E! not root: run apt-get update first (the suite downloads a guest kernel)" >&2; exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "E! not root: install these Debian packages first, then run make test again:" >&2
  echo "   apt-get install -y --no-install-recommends$missing" >&2
  exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
