"""QEMU/KVM on one node: command line, QMP, process lifecycle, taps, console.

Modules: ``hvparams`` (validated hypervisor parameters), ``cmdline`` (pure
argv builder), ``qmp`` (the only QMP speaker), ``process`` (start, find,
stop, reset of daemonized QEMUs), ``tap`` (bridge taps via pyroute2),
``console`` (serial console socket), ``hotplug`` (disks and NICs added to
and removed from a running QEMU), ``daemon`` (the one place that runs
programs: launches QEMU binaries that daemonize, finds and signals them by
pidfile), ``nbdexport`` (the mirror secondary's ``qemu-storage-daemon``),
``blockbackup`` (a running guest's disks copied as of one instant),
``guestagent`` (qemu-ga: the guest's file systems frozen around that instant).

Errors, each carrying its fields and what would fix it:
``hvparams.HvParamError`` and ``cmdline.SpecError`` (both ValueError: bad
input, every problem listed); ``qmp.QmpError``; ``process.QemuStartError``,
``process.QemuStopError``, ``process.InstanceNotRunning``,
``process.InstanceStillRunning``; ``hotplug.HotplugError``; ``tap.TapError``; ``console.ConsoleError``;
``daemon.LaunchError``; ``nbdexport.ExportError``; ``blockbackup.BackupError``;
``guestagent.GuestAgentError``.

A leaf package: it imports none of hostagent, storage, election, membership.
"""
