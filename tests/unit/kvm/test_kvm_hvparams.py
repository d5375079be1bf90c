import json

import pytest

from kvm.hvparams import HV_PARAM_NAMES, HvParamError, HvParams, hvparams_to_dict, kernel_path_problems, parse_hvparams


def test_empty_values_give_documented_defaults():
    hv = parse_hvparams({})
    assert hv == HvParams()
    assert (hv.accel, hv.machine, hv.cpu_model, hv.boot) == ("kvm", "q35", "max", "disk")
    assert (hv.serial_console, hv.vnc) == (True, "off")
    assert (hv.disk_bus, hv.disk_cache) == ("virtio", "none")
    assert (hv.nic_model, hv.shutdown_timeout_s) == ("virtio", 120)


def test_cli_strings_are_converted_to_field_types():
    hv = parse_hvparams({"serial_console": "no", "shutdown_timeout_s": "30", "accel": "tcg"})
    assert hv.serial_console is False
    assert hv.shutdown_timeout_s == 30
    assert hv.accel == "tcg"


@pytest.mark.parametrize("word,expected", [("true", True), ("YES", True), ("on", True),
                                           ("1", True), ("false", False), ("Off", False),
                                           ("0", False), (True, True), (False, False)])
def test_boolean_words_are_accepted(word, expected):
    assert parse_hvparams({"serial_console": word}).serial_console is expected


def test_values_override_the_base_and_keep_its_other_fields():
    base = HvParams(accel="tcg", vnc="localhost")
    hv = parse_hvparams({"disk_bus": "scsi"}, base=base)
    assert (hv.accel, hv.vnc, hv.disk_bus) == ("tcg", "localhost", "scsi")


def test_bad_choice_names_the_accepted_values():
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"accel": "xen"})
    assert err.value.problems == ["hypervisor parameter 'accel': 'xen' is not one of kvm, tcg"]


def test_every_problem_is_reported_at_once():
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"accel": "xen", "bogus": "1", "serial_console": "maybe",
                        "shutdown_timeout_s": "soon", "nic_model": "ne2k"})
    problems = err.value.problems
    assert len(problems) == 5
    assert any("unknown hypervisor parameter 'bogus'" in p and "accel" in p for p in problems)
    assert any("'serial_console'" in p and "not a boolean" in p for p in problems)
    assert any("'shutdown_timeout_s'" in p and "not a whole number" in p for p in problems)
    assert any("'nic_model'" in p and "virtio, e1000, rtl8139" in p for p in problems)
    assert all(p in str(err.value) for p in problems)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"acel": "kvm"})
    for name in HV_PARAM_NAMES:
        assert name in err.value.problems[0]


def test_host_cpu_is_rejected_without_kvm():
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"accel": "tcg", "cpu_model": "host"})
    assert "'host' needs accel 'kvm'" in err.value.problems[0]


def test_host_cpu_is_accepted_with_kvm():
    assert parse_hvparams({"cpu_model": "host"}).cpu_model == "host"


def test_host_cpu_is_rejected_when_base_uses_tcg():
    with pytest.raises(HvParamError):
        parse_hvparams({"cpu_model": "host"}, base=HvParams(accel="tcg"))


def test_shutdown_timeout_must_be_positive_and_bounded():
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"shutdown_timeout_s": 0})
    assert "out of range 1..3600" in err.value.problems[0]
    with pytest.raises(HvParamError):
        parse_hvparams({"shutdown_timeout_s": True})


def test_kernel_paths_must_be_absolute_and_args_need_a_kernel():
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"kernel_path": "vmlinuz", "initrd_path": "/boot/initrd"})
    assert any("must be an absolute path" in p for p in err.value.problems)
    with pytest.raises(HvParamError) as err:
        parse_hvparams({"kernel_args": "quiet"})
    assert "only with 'kernel_path'" in err.value.problems[0]


def test_dict_round_trips_through_json():
    hv = HvParams(accel="tcg", vnc="localhost", serial_console=False, shutdown_timeout_s=7,
                  kernel_path="/boot/vmlinuz", kernel_args="quiet")
    stored = json.loads(json.dumps(hvparams_to_dict(hv)))
    assert set(stored) == set(HV_PARAM_NAMES)
    assert parse_hvparams(stored) == hv


def test_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_hvparams({"vnc": "anywhere"})


@pytest.mark.parametrize("key,value", [("machine", ""), ("machine", "q35,accel=kvm"),
                                       ("cpu_model", ""), ("cpu_model", "max -S")])
def test_machine_and_cpu_must_be_plain_qemu_names(key, value):
    with pytest.raises(HvParamError) as err:
        parse_hvparams({key: value})
    assert f"'{key}'" in err.value.problems[0]


def test_cpu_model_may_carry_feature_flags():
    assert parse_hvparams({"cpu_model": "Haswell,+vmx,-hle"}).cpu_model == "Haswell,+vmx,-hle"


@pytest.mark.parametrize("path", ["/etc/shadow", "/boot/../etc/shadow", "/boot/./vmlinuz", "//boot/vmlinuz",
                                  "/bootx/vmlinuz", "/boot", "/boot/", "vmlinuz"])
def test_kernel_files_outside_the_kernel_directories_are_named(path):
    hv = HvParams(kernel_path="/boot/vmlinuz", initrd_path=path)
    problems = kernel_path_problems(hv, ["/boot", "/var/cache/corral/guest"], " on node 'n1'")
    assert problems == [f"hypervisor parameter 'initrd_path': {path!r} is not a file in the kernel directories "
                        "on node 'n1' (/boot, /var/cache/corral/guest); put the kernel there, or add its "
                        "directory to kernel_dirs in [paths] of agent.toml"]


def test_kernel_files_inside_the_kernel_directories_pass():
    hv = HvParams(kernel_path="/var/cache/corral/guest/vmlinuz", initrd_path="/boot/initrd.img-6.1")
    assert kernel_path_problems(hv, ["/boot", "/var/cache/corral/guest/"]) == []
    assert kernel_path_problems(HvParams(), []) == []
