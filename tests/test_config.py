"""Config: the validation host's defaults, presets per kernel version, clear errors."""
import dataclasses
import pickle

import pytest

from mmemu import MM, Config


def test_defaults_are_the_validation_host():
    c = Config()
    assert (c.kernel, c.arch, c.thp, c.defrag, c.use_zero_page, c.zero_page) == \
        ("6.18", "x86_64", "madvise", "madvise", True, True)
    assert dict(c.hugepages) == {16: "never", 32: "never", 64: "never", 128: "never", 256: "never",
                                 512: "never", 1024: "never", 2048: "inherit"}
    assert (c.huge_zero_write, c.pt_reclaim, c.mmap_thp_align, c.atomic_write_fault) == \
        ("thp", True, "pmd_multiple", False)
    assert c.max_map_count == 65530


@pytest.mark.parametrize("version,hzw,reclaim,align", [
    ("6.1", "split", False, "none"), ("6.6", "split", False, "none"), ("6.8", "split", False, "any"),
    ("6.12", "split", False, "pmd_multiple"), ("6.13", "thp", False, "pmd_multiple"),
    ("6.14", "thp", True, "pmd_multiple"), ("6.18", "thp", True, "pmd_multiple"),
])
def test_presets_follow_the_versions_that_changed_behaviour(version, hzw, reclaim, align):
    c = Config.for_kernel(version)
    assert (c.kernel, c.huge_zero_write, c.pt_reclaim, c.mmap_thp_align) == (version, hzw, reclaim, align)


def test_for_kernel_takes_overrides_and_equals_the_default_for_6_18():
    assert Config.for_kernel("6.18") == Config()
    assert Config.for_kernel("6.6", arch="arm64").arch == "arm64"


@pytest.mark.parametrize("field,value", [
    ("thp", "sometimes"), ("defrag", "eager"), ("arch", "riscv"), ("huge_zero_write", "copy"),
    ("use_zero_page", 1), ("zero_page", "yes"), ("atomic_write_fault", None), ("memory", 3 << 20),
    ("memory", 0), ("memory", True), ("max_map_count", 0), ("kernel", "5.4"), ("kernel", "six"),
    ("mmap_thp_align", "always"), ("pt_reclaim", 0),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


def test_hugepages_validates_sizes_and_modes_and_fills_the_rest():
    with pytest.raises(ValueError, match="size"):
        Config(hugepages={8: "always"})
    with pytest.raises(ValueError, match="hugepages"):
        Config(hugepages={64: "sometimes"})
    with pytest.raises(ValueError, match="multi-size"):
        Config(kernel="6.6", hugepages={64: "always"})
    assert Config(hugepages={2048: "never"}).hugepages[64] == "never"


def test_config_is_frozen_hashable_picklable_and_replaceable():
    c = Config(thp="always")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.thp = "never"
    assert hash(c) == hash(Config(thp="always")) and c != Config()
    assert pickle.loads(pickle.dumps(c)) == c
    assert c.replace(arch="arm64") == Config(thp="always", arch="arm64")
    with pytest.raises(ValueError, match="arch"):
        c.replace(arch="mips")


def test_mm_takes_only_a_config():
    with pytest.raises(TypeError, match="Config"):
        MM({"thp": "always"})


def test_from_host_reads_the_running_kernel():
    import platform
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    c = Config.from_host()
    assert c.kernel == ".".join(platform.release().split(".")[:2])
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        assert f"[{c.thp}]" in f.read()
    with open("/proc/sys/vm/max_map_count") as f:
        assert c.max_map_count == int(f.read())
