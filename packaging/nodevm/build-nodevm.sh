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
# writable root; ext4 for the state disk (tests/integration/nodevm.py);
# device-mapper for LVM; DRBD (8.4 in Debian 12's kernel).
# crc32c is only a soft dependency of libcrc32c (which DRBD needs): named here.
readonly NODE_MODULES=(virtio_pci virtio_blk virtio_net virtio_console 9pnet_virtio 9p overlay ext4 dm_mod dm_snapshot crc32c_generic drbd)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../image-build.sh
source "$here/../image-build.sh"
outdir_of "$@"
need_tools apt-cache apt-get dpkg-deb depmod modinfo cpio gzip xz flock sha256sum

# The concrete kernel package behind the meta package, from its versioned
# Depends (the name changes with Debian point releases: never hard-coded).
kernel_dep=$(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null \
    | sed -n 's/^Depends: \(linux-image-[0-9][^ ]*-amd64\) (= \([^)]*\)).*$/\1=\2/p' | head -n1)
[[ -n $kernel_dep ]] || die "cannot resolve $KERNEL_META to a kernel package; run 'apt-get update' first"
kernel_pkg=${kernel_dep%%=*}
kernel_pkg_version=${kernel_dep#*=}

stamp="$(cat "$here/build-nodevm.sh" "$here/../image-build.sh" "$here/initramfs-init" | sha256sum | cut -d' ' -f1) $kernel_pkg=$kernel_pkg_version"

begin_build "node-VM image" "$outdir" "$stamp" vmlinux initrd.img
fetch_kernel "$kernel_pkg" "$kernel_pkg_version"

# The uncompressed kernel: the XZ stream inside the bzImage (QEMU boots the
# ELF through its PVH entry point). xz complains about the bytes after the
# stream; the ELF magic says whether what came out is the kernel.
bz="$work/kernel/boot/vmlinuz-$kernel_version"
offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
[[ -n $offset ]] || die "no XZ stream in $bz: this kernel is compressed another way"
tail -c +$((offset + 1)) "$bz" | xz -dcq >"$image/vmlinux" 2>/dev/null || true
[[ "$(head -c 4 "$image/vmlinux" | od -An -c | tr -d ' ')" == '177ELF' ]] || die "could not extract the kernel from $bz"

busybox_initramfs "$here/initramfs-init" lower rw newroot
copy_modules "${NODE_MODULES[@]}"
pack_initramfs 1

finish_build
echo "node-VM image built: $outdir (kernel $kernel_version, modules: ${copied_modules[*]})"
