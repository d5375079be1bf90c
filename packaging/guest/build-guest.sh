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

die() {
    echo "build-guest: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../initramfs-modules.sh
source "$here/../initramfs-modules.sh"
outdir=$(realpath -m "$1")
parent=$(dirname "$outdir")
mkdir -p "$parent"

for tool in apt-cache apt-get dpkg-deb depmod modinfo cpio gzip mkfs.ext4 qemu-img flock sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' not found; install the Debian packages listed in the Makefile"
done
[[ -x /bin/busybox ]] || die "/bin/busybox not found; install the Debian package busybox-static"

# The concrete kernel package behind the meta package and its exact version,
# from the meta package's versioned Depends, e.g.
# "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)". One apt-cache call: on
# hosts without apt's binary cache each call parses all package lists (~1 s).
kernel_dep=$(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null \
    | sed -n 's/^Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\) (= \([^)]*\)).*$/\1=\2/p' | head -n1)
[[ -n $kernel_dep ]] || die "cannot resolve $KERNEL_META to a kernel package; run 'apt-get update' first"
kernel_pkg=${kernel_dep%%=*}
kernel_pkg_version=${kernel_dep#*=}

stamp="$(cat "$here/build-guest.sh" "$here/../initramfs-modules.sh" "$here/init" "$here/power-button" | sha256sum | cut -d' ' -f1) $kernel_pkg=$kernel_pkg_version"

image_is_current() {
    [[ -f $outdir/vmlinuz && -f $outdir/initrd.img && -f $outdir/base.qcow2 ]] \
        && [[ "$(cat "$outdir/STAMP" 2>/dev/null)" == "$stamp" ]]
}

if image_is_current; then
    echo "guest image up to date: $outdir"
    exit 0
fi

# Serialise concurrent builds of the same OUTDIR; the loser finds it current.
exec 9>"$parent/.$(basename "$outdir").lock"
flock -w 600 9 || die "another build of $outdir held the lock for 600 s; remove it if it is stuck"
if image_is_current; then
    echo "guest image up to date: $outdir"
    exit 0
fi

# Leftovers of builds that were killed before their EXIT trap could run.
rm -rf "$parent/.$(basename "$outdir").build."*

build=$(mktemp -d "$parent/.$(basename "$outdir").build.XXXXXX")
trap 'rm -rf "$build"' EXIT
work="$build/work"
image="$build/image"
initramfs="$work/initramfs"
mkdir -p "$work/deb" "$work/kernel" "$image"

echo "build-guest: downloading $kernel_pkg=$kernel_pkg_version"
# Sandbox user root: _apt cannot write into this private build directory.
(cd "$work/deb" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg=$kernel_pkg_version" >/dev/null)
dpkg-deb -x "$work"/deb/*.deb "$work/kernel"

kernel_version=$(basename "$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n1)")
kernel_version=${kernel_version#vmlinuz-}
[[ -n $kernel_version ]] || die "$kernel_pkg contains no /boot/vmlinuz-*"
cp "$work/kernel/boot/vmlinuz-$kernel_version" "$image/vmlinuz"
# The package ships no modules.dep; modinfo needs it to find modules by name.
depmod -b "$work/kernel" "$kernel_version"

mkdir -p "$initramfs"/{bin,dev,proc,sys,mnt,run,lib/modules,etc/acpi/PWRF}
cp /bin/busybox "$initramfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -s busybox "$initramfs/bin/$applet"
done
install -m 0755 "$here/init" "$initramfs/init"
# busybox acpid runs /etc/acpi/PWRF/00000080 when the power button is pressed.
install -m 0755 "$here/power-button" "$initramfs/etc/acpi/PWRF/00000080"

# Depth-first over modinfo's depends field so each module follows its deps.
copy_modules "$work/kernel" "$kernel_version" "$initramfs" "${GUEST_MODULES[@]}"

(cd "$initramfs" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -9n >"$image/initrd.img"

truncate -s "$DISK_SIZE" "$work/base.raw"
mkfs.ext4 -F -q -L "$DISK_LABEL" "$work/base.raw"
qemu-img convert -q -f raw -O qcow2 "$work/base.raw" "$image/base.qcow2"

rm -rf "$work"
echo "$stamp" >"$image/STAMP"
sync -f "$image/STAMP"

# Swap the finished image in; OUTDIR is briefly absent, never half-written.
chmod 0755 "$image"
if [[ -e $outdir ]]; then
    mv -T "$outdir" "$build/old"
fi
mv -T "$image" "$outdir"
echo "guest image built: $outdir (kernel $kernel_version, modules: ${copied_modules[*]})"
