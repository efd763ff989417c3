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
    assert mm.smaps(a)["AnonHugePages"] == 64 << 10
    assert mm.prctl("PR_GET_THP_DISABLE") == 1
