# Sourced by the image builders (packaging/guest/build-guest.sh, packaging/nodevm/build-nodevm.sh):
# the steps they share.
#
#   outdir_of ARG...                       the one argument OUTDIR, made absolute, its parent created
#   need_tools TOOL...                     each on the PATH, and /bin/busybox (busybox-static)
#   begin_build WHAT OUTDIR STAMP FILE...  exits 0 when OUTDIR holds FILE... and STAMP already;
#       else takes OUTDIR's build lock (concurrent builds: the loser finds it current) and sets
#       build, work, image and initramfs (a private directory beside OUTDIR, removed at exit)
#   fetch_kernel PACKAGE VERSION           apt-get download and extract it into $work/kernel (never
#       installed), with modules.dep; sets kernel_version
#   busybox_initramfs INIT DIR...          a busybox-static initramfs tree with INIT as /init
#   copy_modules MODULE...                 the modules and their dependencies into the initramfs
#   pack_initramfs LEVEL                   the tree as $image/initrd.img (gzip LEVEL)
#   finish_build                           writes STAMP and swaps $image in as OUTDIR: briefly
#       absent, never half-written

die() {
    echo "$(basename "$0" .sh): $*" >&2
    exit 1
}

outdir_of() {
    [[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
    outdir=$(realpath -m "$1")
    mkdir -p "$(dirname "$outdir")"
}

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "'$tool' not found; install the Debian packages listed in packaging/install-deps.sh"
    done
    [[ -x /bin/busybox ]] || die "/bin/busybox not found; install the Debian package busybox-static"
}

begin_build() {
    _what=$1 _outdir=$2 _stamp=$3
    shift 3
    _files=("$@")
    _current && { echo "$_what up to date: $_outdir"; exit 0; }
    local parent name
    parent=$(dirname "$_outdir") name=$(basename "$_outdir")
    exec 9>"$parent/.$name.lock"
    flock -w 600 9 || die "another build of $_outdir held the lock for 600 s; remove it if it is stuck"
    _current && { echo "$_what up to date: $_outdir"; exit 0; }
    rm -rf "$parent/.$name.build."*  # leftovers of builds killed before their EXIT trap could run
    build=$(mktemp -d "$parent/.$name.build.XXXXXX")
    trap 'rm -rf "$build"' EXIT
    work="$build/work" image="$build/image" initramfs="$build/work/initramfs"
    mkdir -p "$work/deb" "$work/kernel" "$image"
}

_current() {
    local file
    for file in "${_files[@]}"; do
        [[ -f $_outdir/$file ]] || return 1
    done
    [[ "$(cat "$_outdir/STAMP" 2>/dev/null)" == "$_stamp" ]]
}

fetch_kernel() {
    local package=$1 version=$2
    echo "$(basename "$0" .sh): downloading $package=$version"
    # Sandbox user root: _apt cannot write into this private build directory.
    (cd "$work/deb" && apt-get download -q -o APT::Sandbox::User=root "$package=$version" >/dev/null)
    dpkg-deb -x "$work"/deb/*.deb "$work/kernel"
    kernel_version=$(basename "$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n1)")
    kernel_version=${kernel_version#vmlinuz-}
    [[ -n $kernel_version ]] || die "$package contains no /boot/vmlinuz-*"
    # The package ships no modules.dep; modinfo needs it to find modules by name.
    depmod -b "$work/kernel" "$kernel_version"
}

busybox_initramfs() {
    local init=$1 applet
    shift
    mkdir -p "$initramfs"/{bin,dev,proc,sys,lib/modules} "${@/#/$initramfs/}"
    cp /bin/busybox "$initramfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -s busybox "$initramfs/bin/$applet"
    done
    install -m 0755 "$init" "$initramfs/init"
}

pack_initramfs() {
    (cd "$initramfs" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null --create --format=newc --owner=0:0 --quiet) | gzip "-$1n" >"$image/initrd.img"
}

finish_build() {
    rm -rf "$work"
    echo "$_stamp" >"$image/STAMP"
    sync -f "$image/STAMP"
    chmod 0755 "$image"
    if [[ -e $_outdir ]]; then
        mv -T "$_outdir" "$build/old"
    fi
    mv -T "$image" "$_outdir"
}

# Each module after its dependencies (depth first), uncompressed, into $initramfs/lib/modules, with
# their load order in lib/modules/load-order for the initramfs's /init to insmod in turn; sets
# copied_modules.
copy_modules() {
    local root=$work/kernel version=$kernel_version
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
