"""QEMU/KVM on one node: command line, QMP, process lifecycle, taps, console.

Modules: ``hvparams`` (validated hypervisor parameters), ``cmdline`` (pure
argv builder), ``qmp`` (the only QMP speaker), ``process`` (start, find,
stop, reset of daemonized QEMUs), ``tap`` (bridge taps via pyroute2),
``console`` (serial console socket), ``hotplug`` (disks and NICs added to
and removed from a running QEMU).

Errors, each carrying its fields and what would fix it:
``hvparams.HvParamError`` and ``cmdline.SpecError`` (both ValueError: bad
input, every problem listed); ``qmp.QmpError``; ``process.QemuStartError``,
``process.QemuStopError``, ``process.InstanceNotRunning``,
``process.InstanceStillRunning``; ``hotplug.HotplugError``; ``tap.TapError``; ``console.ConsoleError``.

A leaf package: it imports none of hostagent, storage, election, membership.
"""
