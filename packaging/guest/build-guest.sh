#!/bin/bash
# Build the Corral test guest (kernel, busybox initramfs, small ext4 disk)
# from Debian packages only, so integration tests boot a real Linux guest
# under QEMU without any image download.
#
# Usage: packaging/guest/build-guest.sh OUTDIR
#
# OUTDIR receives vmlinuz, initrd.img, base.qcow2 and STAMP. STAMP holds a
# hash of this script, the guest's init and power-button handler, and the
# kernel package version; when it matches, the build is skipped. The image is
# built in a temporary directory beside OUTDIR and renamed into place, so an
# interrupted build never leaves a directory with a valid-looking STAMP.
set -euo pipefail

readonly KERNEL_META=linux-image-cloud-amd64
# Drivers the guest needs: the virtio disk, network and console, ext4 for the
# disk, the ACPI power button plus evdev so acpid sees its events, and pvpanic
# so a crashed guest reports GUEST_PANICKED over QMP. PCI hot-plug (ACPI and
# PCIe native, for disks and NICs added to a running guest) is built into the
# cloud kernel: CONFIG_HOTPLUG_PCI_ACPI=y, CONFIG_HOTPLUG_PCI_PCIE=y.
readonly GUEST_MODULES=(virtio_pci virtio_blk virtio_net virtio_console ext4 button evdev pvpanic_mmio pvpanic_pci)
readonly DISK_SIZE=64M
readonly DISK_LABEL=corral

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../image-build.sh
source "$here/../image-build.sh"
outdir_of "$@"
need_tools apt-cache apt-get dpkg-deb depmod modinfo cpio gzip mkfs.ext4 qemu-img flock sha256sum

# The concrete kernel package behind the meta package and its exact version,
# from the meta package's versioned Depends, e.g.
# "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)". One apt-cache call: on
# hosts without apt's binary cache each call parses all package lists (~1 s).
kernel_dep=$(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null \
    | sed -n 's/^Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\) (= \([^)]*\)).*$/\1=\2/p' | head -n1)
[[ -n $kernel_dep ]] || die "cannot resolve $KERNEL_META to a kernel package; run 'apt-get update' first"
kernel_pkg=${kernel_dep%%=*}
kernel_pkg_version=${kernel_dep#*=}

stamp="$(cat "$here/build-guest.sh" "$here/../image-build.sh" "$here/init" "$here/power-button" | sha256sum | cut -d' ' -f1) $kernel_pkg=$kernel_pkg_version"

begin_build "guest image" "$outdir" "$stamp" vmlinuz initrd.img base.qcow2
fetch_kernel "$kernel_pkg" "$kernel_pkg_version"
cp "$work/kernel/boot/vmlinuz-$kernel_version" "$image/vmlinuz"

busybox_initramfs "$here/init" mnt run etc/acpi/PWRF
# busybox acpid runs /etc/acpi/PWRF/00000080 when the power button is pressed.
install -m 0755 "$here/power-button" "$initramfs/etc/acpi/PWRF/00000080"
copy_modules "${GUEST_MODULES[@]}"
pack_initramfs 9

truncate -s "$DISK_SIZE" "$work/base.raw"
mkfs.ext4 -F -q -L "$DISK_LABEL" "$work/base.raw"
qemu-img convert -q -f raw -O qcow2 "$work/base.raw" "$image/base.qcow2"

finish_build
echo "guest image built: $outdir (kernel $kernel_version, modules: ${copied_modules[*]})"
