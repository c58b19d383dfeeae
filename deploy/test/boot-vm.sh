#!/usr/bin/env bash
# Boot test for the cloud-init deployment: a Debian VM built here from Debian's packages
# (debootstrap, with cloud-init and a kernel) boots under KVM from a NoCloud seed that
# carries user-data rendered by `tracemesh deploy render`. Nothing is done inside the VM
# by hand: cloud-init must install and start the agent, which enrols with a coordinator
# on this host and delivers the traces of a campaign.
#
# The guest reaches nothing but the coordinator: qemu user networking with restrict=on,
# one guestfwd (10.0.2.100:7443 in the guest -> the coordinator's loopback port), and
# NoCloud as the only datasource.
#
# Usage (as root, /dev/kvm present):  bash deploy/test/boot-vm.sh
# guestfwd uses `cmd:socat` (one relay per guest connection): the chardev form would open
# a single connection to the coordinator when qemu starts, which the TLS server drops.
# Environment:
#   TRACEMESH_BIN  directory with release `tracemesh` and `tracemesh-agent` (target/release)
#   WORK           scratch and cache directory (/var/tmp/tracemesh-boot-vm); the debootstrapped
#                  root file system is cached there and reused while the package list is unchanged
#   MIRROR         Debian mirror (default: the first URI in the host's apt sources)
#   BOOT_TIMEOUT   seconds from VM start to the first trace before failing (900)
#   BUILD_ONLY=1   only build (or find cached) the guest's root file system, then exit
#   ACCEL          kvm | tcg | auto (default auto: KVM, unless this host's KVM is PVM, the
#                  paravirtual nested KVM that runs only PVM-enabled guest kernels, not
#                  Debian's; then TCG, the same guest emulated, slower)
#   KEEP=1         keep the run directory (serial log, coordinator data) after success
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)

BIN=${TRACEMESH_BIN:-target/release}
WORK=${WORK:-/var/tmp/tracemesh-boot-vm}
SUITE=bookworm
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
GUEST_COORD=10.0.2.100:7443
# python3-cffi-backend provides the virtual packages python3-cryptography needs, which
# debootstrap's resolver does not follow by itself.
PACKAGES=systemd-sysv,udev,kmod,iproute2,cloud-init,python3-cffi-backend,linux-image-cloud-amd64,initramfs-tools

log() { printf '[boot-vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, mkfs, KVM)"
[ -c /dev/kvm ] || die "/dev/kvm is missing"
for t in debootstrap qemu-system-x86_64 qemu-img mkfs.ext4 genisoimage cloud-init strip socat; do
  command -v "$t" >/dev/null || die "missing $t (apt-get install debootstrap qemu-system-x86 qemu-utils e2fsprogs genisoimage cloud-init binutils socat)"
done
if [ "${BUILD_ONLY:-0}" != 1 ]; then
  for b in tracemesh tracemesh-agent; do
    [ -x "$BIN/$b" ] || die "$BIN/$b not built (cargo build --release --workspace)"
  done
fi

if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
  [ -n "$MIRROR" ] || MIRROR=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

mkdir -p "$WORK"
KEY=$(printf '%s %s %s v1' "$SUITE" "$PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)
ROOT="$WORK/rootfs-$KEY"
RUN=$(mktemp -d "$WORK/run.XXXXXX")
QEMU_PID=
COORD_PID=
cleanup() {
  local rc=$?
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
  [ -n "$COORD_PID" ] && kill "$COORD_PID" 2>/dev/null && wait "$COORD_PID" 2>/dev/null
  if [ "$rc" != 0 ]; then
    log "serial console (last 60 lines of $RUN/serial.log):"
    tail -n 60 "$RUN/serial.log" 2>/dev/null | sed 's/^/  | /' >&2 || true
    log "kept $RUN for inspection"
  elif [ "${KEEP:-0}" = 1 ]; then
    log "kept $RUN"
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the guest's root file system, from Debian's packages ------------------------------
if [ ! -f "$ROOT/.complete" ]; then
  log "debootstrap $SUITE from $MIRROR (cached in $ROOT afterwards)"
  rm -rf "$ROOT.partial"
  t0=$SECONDS
  timeout 900 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.partial" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  R="$ROOT.partial"
  echo tracemesh-vm >"$R/etc/hostname"
  echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' >"$R/etc/fstab"
  # A cloud image's network: DHCP on the first NIC.
  cat >"$R/etc/systemd/network/10-dhcp.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
EOF
  chroot "$R" systemctl enable systemd-networkd.service >/dev/null 2>&1
  # Only the NoCloud seed, and the network stays as configured above.
  cat >"$R/etc/cloud/cloud.cfg.d/90-tracemesh-boot-test.cfg" <<'EOF'
datasource_list: [ NoCloud ]
network: {config: disabled}
EOF
  # Debian's default cloud user joins these groups; minbase lacks some of them.
  for g in adm audio cdrom dialout dip floppy netdev plugdev sudo video; do
    chroot "$R" getent group "$g" >/dev/null || chroot "$R" groupadd --system "$g"
  done
  # Test-only: copy the agent's log to the serial console (the unit itself is untouched).
  mkdir -p "$R/etc/systemd/system/tracemesh-agent.service.d"
  printf '[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n' \
    >"$R/etc/systemd/system/tracemesh-agent.service.d/10-console.conf"
  chroot "$R" apt-get clean
  ls "$R"/boot/vmlinuz-* "$R"/boot/initrd.img-* >/dev/null || die "no kernel/initrd in the guest"
  touch "$R/.complete"
  mv "$R" "$ROOT"
  log "root file system ready in $((SECONDS - t0)) s"
fi

[ "${BUILD_ONLY:-0}" = 1 ] && { log "root file system: $ROOT"; exit 0; }

log "building the disk image"
mkdir -p "$RUN/seed"
truncate -s 3G "$RUN/base.raw"
timeout 300 mkfs.ext4 -q -F -L root -d "$ROOT" "$RUN/base.raw"
qemu-img create -q -f qcow2 -F raw -b "$RUN/base.raw" "$RUN/disk.qcow2"
cp "$(ls -1 "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)" "$RUN/vmlinuz"
cp "$(ls -1 "$ROOT"/boot/initrd.img-* | sort -V | tail -n1)" "$RUN/initrd.img"

# --- 2. the coordinator on the host, and the rendered user-data --------------------------
DATA="$RUN/coord"
"$BIN/tracemesh" serve --data "$DATA" --listen 127.0.0.1:0 >"$RUN/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 100); do [ -s "$DATA/coordinator.addr" ] && break; sleep 0.1; done
[ -s "$DATA/coordinator.addr" ] || die "coordinator did not start: $(tail -n 5 "$RUN/coordinator.log")"
HOST_ADDR=$(tr -d '\n' <"$DATA/coordinator.addr")
log "coordinator on $HOST_ADDR; the guest reaches it as $GUEST_COORD"
TM=("$BIN/tracemesh" --data "$DATA")

cat >"$RUN/inventory.toml" <<EOF
coordinator = "$GUEST_COORD"
[[agent]]
name = "vm-1"
country = "CA"
city = "Toronto"
loc = [43.65, -79.38]
asn = 812
tags = ["boot-test"]
provider = "generic"
# The only address the guest can probe: user networking's gateway, which answers pings.
allow = ["10.0.2.0/24"]
EOF
strip -o "$RUN/tracemesh-agent" "$BIN/tracemesh-agent"
"${TM[@]}" deploy render --inventory "$RUN/inventory.toml" --out "$RUN/out" \
  --embed-binary "$RUN/tracemesh-agent" --ttl 1h >/dev/null
log "user-data: $(stat -c %s "$RUN/out/vm-1.yaml") bytes (agent embedded, gz+b64)"
cloud-init schema --config-file "$RUN/out/vm-1.yaml" >&2 || die "rendered user-data fails cloud-init schema"
cp "$RUN/out/vm-1.yaml" "$RUN/seed/user-data"
printf 'instance-id: tracemesh-boot-%s\nlocal-hostname: vm-1\n' "$(basename "$RUN")" >"$RUN/seed/meta-data"
genisoimage -quiet -output "$RUN/seed.iso" -volid cidata -joliet -rock \
  "$RUN/seed/user-data" "$RUN/seed/meta-data"

# --- 3. boot -------------------------------------------------------------------------------
ACCEL=${ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
  if [ -d /sys/module/kvm_pvm ]; then
    log "this host's /dev/kvm is PVM (nested paravirtual KVM): Debian's kernel cannot run on it; using TCG"
    ACCEL=tcg
  else
    ACCEL=kvm
  fi
fi
case "$ACCEL" in
  kvm) ACCEL_ARGS=(-enable-kvm -cpu host) ;;
  tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max -smp 2) ;;
  *) die "ACCEL must be kvm, tcg or auto" ;;
esac
GUEST_HOST=${GUEST_COORD%:*}
GUEST_PORT=${GUEST_COORD##*:}
log "booting ($ACCEL, restrict=on, guestfwd $GUEST_COORD -> $HOST_ADDR)"
T0=$(date +%s.%N)
timeout $((BOOT_TIMEOUT + 60)) qemu-system-x86_64 \
  -smp 1 "${ACCEL_ARGS[@]}" -m 1024 \
  -kernel "$RUN/vmlinuz" -initrd "$RUN/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 ds=nocloud panic=-1" \
  -drive "file=$RUN/disk.qcow2,if=virtio,format=qcow2" \
  -drive "file=$RUN/seed.iso,if=virtio,format=raw,readonly=on" \
  -netdev "user,id=n0,restrict=on,guestfwd=tcp:$GUEST_HOST:$GUEST_PORT-cmd:socat - TCP:$HOST_ADDR" \
  -device virtio-net-pci,netdev=n0 \
  -display none -monitor none -serial "file:$RUN/serial.log" -no-reboot &
QEMU_PID=$!
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
deadline=$((SECONDS + BOOT_TIMEOUT))
alive() { kill -0 "$QEMU_PID" 2>/dev/null || die "qemu exited early"; }

# Enrolment and the session: the agent shows up as connected.
while :; do
  alive
  if "${TM[@]}" agents --json 2>/dev/null | grep -q '"connected":true'; then break; fi
  [ $SECONDS -lt $deadline ] || die "agent did not connect within ${BOOT_TIMEOUT}s"
  sleep 1
done
T_CONNECTED=$(since)
log "agent vm-1 enrolled and connected $T_CONNECTED s after boot"

CAMPAIGN=$("${TM[@]}" campaign create --targets 10.0.2.2 --agents name:vm-1 --every 5s --rounds 3)
log "campaign $CAMPAIGN created"
while :; do
  alive
  n=$("${TM[@]}" traces --campaign "$CAMPAIGN" --json 2>/dev/null | grep -c '"vantage":"vm-1"' || true)
  [ "$n" -ge 1 ] && break
  [ $SECONDS -lt $deadline ] || die "no trace from vm-1 within ${BOOT_TIMEOUT}s"
  sleep 0.5
done
T_FIRST=$(since)
"${TM[@]}" traces --campaign "$CAMPAIGN" | head -n 3 | sed 's/^/  /' >&2
for s in 'Cloud-init .* finished' 'Reached target.*Multi-User' ; do
  grep -qE "$s" "$RUN/serial.log" || log "note: serial log has no \"$s\" yet"
done
log "PASS ($ACCEL): boot -> agent connected ${T_CONNECTED} s, boot -> first trace ${T_FIRST} s"
printf '{"accel": "%s", "connected_s": %s, "first_trace_s": %s}\n' "$ACCEL" "$T_CONNECTED" "$T_FIRST"
