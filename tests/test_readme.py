"""The README's usage example runs as written and says what it claims."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    text = README.read_text()
    block = re.search(r"## Use\n\n```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, str(README), "exec"), scope)
    mm, a = scope["mm"], scope["a"]
    assert a % (2 << 20) == 0                              # "2 MiB-aligned"
    assert scope["faults"].sum() == 31                     # 32 THPs, the first made by the write
    assert scope["child"].closed
    assert mm.vmstat["thp_split_pmd"] == 4                 # the child's COW, munmap, free of 1M, mlock
    assert mm.vmstat["thp_split_page"] == 2                # the shrinker, MADV_FREE of part
    assert mm.khugepaged["full_scans"] == 1
    assert scope["b"] % (2 << 20) == 0
    assert mm.prctl("PR_GET_THP_DISABLE") == 1


def test_readme_workloads_example_runs_and_its_number_holds():
    text = README.read_text()
    block = re.search(r"## Questions in one call\n.*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, str(README), "exec"), scope)
    assert scope["r"].final["rss_kb"] == 16 << 20              # memfd: every page costs memory
    assert "262656" in block


def test_readme_pytest_example_passes():
    from mmemu import MM
    text = README.read_text()
    block = re.findall(r"```python\n(from mmemu.testing.*?)```", text, re.S)[0]
    scope = {}
    exec(compile(block, str(README), "exec"), scope)
    scope["test_my_arena_maps_one_thp"](MM())
