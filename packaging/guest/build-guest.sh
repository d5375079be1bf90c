#!/bin/bash
# Build the Corral test guest (kernel, busybox initramfs, small ext4 disk)
# from Debian packages only, so integration tests boot a real Linux guest
# under QEMU without any image download.
#
# Usage: packaging/guest/build-guest.sh OUTDIR
#
# OUTDIR receives vmlinuz, initrd.img, base.qcow2 and STAMP. STAMP holds a
# hash of this script, the guest's init and power-button handler, and the
# kernel and guest agent package versions; when it matches, the build is skipped. The image is
# built in a temporary directory beside OUTDIR and renamed into place, so an
# interrupted build never leaves a directory with a valid-looking STAMP.
set -euo pipefail

readonly KERNEL_META=linux-image-cloud-amd64
# The QEMU guest agent, so snapshots and backups can freeze the guest's disk
# (kvm.guestagent): Debian's qemu-ga, taken from its package like the kernel
# (never installed here), with the host's copies of the libraries it links.
readonly AGENT_PACKAGE=qemu-guest-agent
# Drivers the guest needs: the virtio disk, network and console, ext4 for the
# disk, the ACPI power button plus evdev so acpid sees its events, and pvpanic
# so a crashed guest reports GUEST_PANICKED over QMP. PCI hot-plug (ACPI and
# PCIe native, for disks and NICs added to a running guest) is built into the
# cloud kernel: CONFIG_HOTPLUG_PCI_ACPI=y, CONFIG_HOTPLUG_PCI_PCIE=y.
readonly GUEST_MODULES=(virtio_pci virtio_blk virtio_net virtio_console ext4 button evdev pvpanic_mmio pvpanic_pci)
readonly DISK_SIZE=64M
readonly DISK_LABEL=corral

# qemu-ga from its package as /bin/qemu-ga, with every library it loads (ldd
# on this host, which has them as QEMU's own dependencies) at the same path.
fetch_agent() {
    local version=$1 lib libs
    echo "$(basename "$0" .sh): downloading $AGENT_PACKAGE=$version"
    mkdir -p "$work/agent"
    (cd "$work/agent" && apt-get download -q -o APT::Sandbox::User=root "$AGENT_PACKAGE=$version" >/dev/null)
    dpkg-deb -x "$work"/agent/*.deb "$work/agent/root"
    install -m 0755 "$work/agent/root/usr/sbin/qemu-ga" "$initramfs/bin/qemu-ga"
    libs=$(ldd "$initramfs/bin/qemu-ga") || die "ldd cannot read qemu-ga"
    if grep -q 'not found' <<<"$libs"; then
        die "qemu-ga needs libraries this host lacks: $(grep 'not found' <<<"$libs" | tr -s ' \t\n' ' ')(install $AGENT_PACKAGE's dependencies)"
    fi
    for lib in $(sed -n 's/^[[:space:]]*\(.* => \)\{0,1\}\(\/[^ ]*\) (0x.*$/\2/p' <<<"$libs"); do
        mkdir -p "$initramfs$(dirname "$lib")"
        cp -L "$lib" "$initramfs$lib"
    done
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../image-build.sh
source "$here/../image-build.sh"
outdir_of "$@"
need_tools apt-cache apt-get dpkg-deb depmod modinfo cpio gzip mkfs.ext4 qemu-img flock sha256sum ldd

# The concrete kernel package behind the meta package and its exact version,
# from the meta package's versioned Depends, e.g.
# "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)", and the guest agent's
# version. One apt-cache call: on hosts without apt's binary cache each call
# parses all package lists (~1 s).
packages=$(apt-cache show --no-all-versions "$KERNEL_META" "$AGENT_PACKAGE" 2>/dev/null || true)
kernel_dep=$(sed -n 's/^Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\) (= \([^)]*\)).*$/\1=\2/p' <<<"$packages" | head -n1)
[[ -n $kernel_dep ]] || die "cannot resolve $KERNEL_META to a kernel package; run 'apt-get update' first"
kernel_pkg=${kernel_dep%%=*}
kernel_pkg_version=${kernel_dep#*=}
agent_version=$(sed -n "/^Package: $AGENT_PACKAGE\$/,/^\$/s/^Version: //p" <<<"$packages" | head -n1)
[[ -n $agent_version ]] || die "no $AGENT_PACKAGE package known to apt; run 'apt-get update' first"

stamp="$(cat "$here/build-guest.sh" "$here/../image-build.sh" "$here/init" "$here/power-button" | sha256sum | cut -d' ' -f1) $kernel_pkg=$kernel_pkg_version $AGENT_PACKAGE=$agent_version"

begin_build "guest image" "$outdir" "$stamp" vmlinuz initrd.img base.qcow2
fetch_kernel "$kernel_pkg" "$kernel_pkg_version"
cp "$work/kernel/boot/vmlinuz-$kernel_version" "$image/vmlinuz"

busybox_initramfs "$here/init" mnt run etc/acpi/PWRF
# busybox acpid runs /etc/acpi/PWRF/00000080 when the power button is pressed.
install -m 0755 "$here/power-button" "$initramfs/etc/acpi/PWRF/00000080"
copy_modules "${GUEST_MODULES[@]}"
fetch_agent "$agent_version"
pack_initramfs 9

truncate -s "$DISK_SIZE" "$work/base.raw"
mkfs.ext4 -F -q -L "$DISK_LABEL" "$work/base.raw"
qemu-img convert -q -f raw -O qcow2 "$work/base.raw" "$image/base.qcow2"

finish_build
echo "guest image built: $outdir (kernel $kernel_version, $AGENT_PACKAGE $agent_version, modules: ${copied_modules[*]})"
