#!/bin/bash
# Build the node-VM boot files: Debian's generic kernel (it has device-mapper
# and DRBD, which this host's kernel lacks) and a small initramfs that mounts
# the host's own root file system read-only over virtio-9p under a tmpfs
# overlay and hands over to packaging/nodevm/node-init. Tests and benchmarks
# boot these VMs under TCG to run real LVM and DRBD (tests/nodevm.py).
#
# Usage: packaging/nodevm/build-nodevm.sh OUTDIR
#
# OUTDIR receives vmlinux (uncompressed: boots in about half the time of the
# compressed kernel under TCG), initrd.img and STAMP (a hash of this script
# and of the initramfs init, and the kernel package version). When STAMP
# matches, nothing is done. Built beside OUTDIR and renamed into place, so an
# interrupted build never leaves a valid-looking STAMP. The kernel package is
# fetched with apt and extracted, never installed on the host.
set -euo pipefail

readonly KERNEL_META=linux-image-amd64
# virtio for disks, network, the control port and the 9p root; overlay for the
# writable root; device-mapper for LVM; DRBD (8.4 in Debian 12's kernel).
# crc32c is only a soft dependency of libcrc32c (which DRBD needs): named here.
readonly NODE_MODULES=(virtio_pci virtio_blk virtio_net virtio_console 9pnet_virtio 9p overlay dm_mod dm_snapshot crc32c_generic drbd)

die() {
    echo "build-nodevm: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../initramfs-modules.sh
source "$here/../initramfs-modules.sh"
outdir=$(realpath -m "$1")
parent=$(dirname "$outdir")
mkdir -p "$parent"

for tool in apt-cache apt-get dpkg-deb depmod modinfo cpio gzip xz flock sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' not found; install the Debian packages listed in packaging/install-deps.sh"
done
[[ -x /bin/busybox ]] || die "/bin/busybox not found; install the Debian package busybox-static"

# The concrete kernel package behind the meta package, from its versioned
# Depends (the name changes with Debian point releases: never hard-coded).
kernel_dep=$(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null \
    | sed -n 's/^Depends: \(linux-image-[0-9][^ ]*-amd64\) (= \([^)]*\)).*$/\1=\2/p' | head -n1)
[[ -n $kernel_dep ]] || die "cannot resolve $KERNEL_META to a kernel package; run 'apt-get update' first"
kernel_pkg=${kernel_dep%%=*}
kernel_pkg_version=${kernel_dep#*=}

stamp="$(cat "$here/build-nodevm.sh" "$here/../initramfs-modules.sh" "$here/initramfs-init" | sha256sum | cut -d' ' -f1) $kernel_pkg=$kernel_pkg_version"

image_is_current() {
    [[ -f $outdir/vmlinux && -f $outdir/initrd.img ]] && [[ "$(cat "$outdir/STAMP" 2>/dev/null)" == "$stamp" ]]
}

if image_is_current; then
    echo "node-VM image up to date: $outdir"
    exit 0
fi
exec 9>"$parent/.$(basename "$outdir").lock"
flock -w 600 9 || die "another build of $outdir held the lock for 600 s; remove it if it is stuck"
if image_is_current; then
    echo "node-VM image up to date: $outdir"
    exit 0
fi
rm -rf "$parent/.$(basename "$outdir").build."*
build=$(mktemp -d "$parent/.$(basename "$outdir").build.XXXXXX")
trap 'rm -rf "$build"' EXIT
work="$build/work"
image="$build/image"
initramfs="$work/initramfs"
mkdir -p "$work/deb" "$work/kernel" "$image"

echo "build-nodevm: downloading $kernel_pkg=$kernel_pkg_version"
(cd "$work/deb" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg=$kernel_pkg_version" >/dev/null)
dpkg-deb -x "$work"/deb/*.deb "$work/kernel"
kernel_version=$(basename "$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n1)")
kernel_version=${kernel_version#vmlinuz-}
[[ -n $kernel_version ]] || die "$kernel_pkg contains no /boot/vmlinuz-*"

# The uncompressed kernel: the XZ stream inside the bzImage (QEMU boots the
# ELF through its PVH entry point). xz complains about the bytes after the
# stream; the ELF magic says whether what came out is the kernel.
bz="$work/kernel/boot/vmlinuz-$kernel_version"
offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
[[ -n $offset ]] || die "no XZ stream in $bz: this kernel is compressed another way"
tail -c +$((offset + 1)) "$bz" | xz -dcq >"$image/vmlinux" 2>/dev/null || true
[[ "$(head -c 4 "$image/vmlinux" | od -An -c | tr -d ' ')" == '177ELF' ]] || die "could not extract the kernel from $bz"
depmod -b "$work/kernel" "$kernel_version"

mkdir -p "$initramfs"/{bin,dev,proc,sys,lower,rw,newroot,lib/modules}
cp /bin/busybox "$initramfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -s busybox "$initramfs/bin/$applet"
done
install -m 0755 "$here/initramfs-init" "$initramfs/init"

copy_modules "$work/kernel" "$kernel_version" "$initramfs" "${NODE_MODULES[@]}"
(cd "$initramfs" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -1n >"$image/initrd.img"

rm -rf "$work"
echo "$stamp" >"$image/STAMP"
sync -f "$image/STAMP"
chmod 0755 "$image"
if [[ -e $outdir ]]; then
    mv -T "$outdir" "$build/old"
fi
mv -T "$image" "$outdir"
echo "node-VM image built: $outdir (kernel $kernel_version, modules: ${copied_modules[*]})"
