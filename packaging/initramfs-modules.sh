# Sourced by the image builders (packaging/guest/build-guest.sh, packaging/nodevm/build-nodevm.sh):
# copy_modules KERNEL_ROOT KERNEL_VERSION INITRAMFS MODULE... copies the named kernel modules
# and everything they depend on (depth first, so each follows its dependencies) from an
# extracted kernel package into INITRAMFS/lib/modules, uncompressed, and writes their load
# order to INITRAMFS/lib/modules/load-order for the initramfs's /init to insmod in turn.
# Sets copied_modules (the load order). Needs die() from the caller.

copy_modules() {
    local root=$1 version=$2 initramfs=$3
    shift 3
    declare -gA _visited=()
    copied_modules=()
    mkdir -p "$initramfs/lib/modules"
    local module
    for module in "$@"; do
        _copy_module "$root" "$version" "$initramfs" "$module"
    done
    printf '%s\n' "${copied_modules[@]}" >"$initramfs/lib/modules/load-order"
}

_copy_module() {
    local root=$1 version=$2 initramfs=$3 name=${4//-/_} dep deps file
    [[ -z ${_visited[$name]:-} ]] || return 0
    _visited[$name]=1
    file=$(modinfo -b "$root" -k "$version" -F filename "$name") || die "module '$name' not found in the kernel package"
    [[ $file != "(builtin)" ]] || return 0
    deps=$(modinfo -b "$root" -k "$version" -F depends "$name")
    for dep in ${deps//,/ }; do
        _copy_module "$root" "$version" "$initramfs" "$dep"
    done
    local ko="$initramfs/lib/modules/$name.ko"
    case $file in
        *.ko) cp "$file" "$ko" ;;
        *.ko.xz) xz -dc "$file" >"$ko" ;;
        *.ko.zst) zstd -qdc "$file" >"$ko" ;;
        *.ko.gz) gzip -dc "$file" >"$ko" ;;
        *) die "module '$name' has an unknown file type: $file" ;;
    esac
    copied_modules+=("$name.ko")
}
