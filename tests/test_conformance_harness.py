"""The conformance harness itself (mmemu.conformance), with a scripted stand-in for the host."""
import contextlib

import pytest

from mmemu import conformance
from mmemu.config import Config
from mmemu.mm import MM

STEPS = [("write", 0)]


def _script_the_host(monkeypatch, smaps_of_each_run):
    """Make compare() play the host by returning, run after run, the emulator's own play with
    the end-of-run smaps replaced by the next of ``smaps_of_each_run`` (None: unchanged)."""
    import mmemu.host as host
    real_play, runs = conformance.play, []

    def play(mm, *args, **kwargs):
        if isinstance(mm, MM):
            return real_play(mm, *args, **kwargs)
        trail, end, wrong = real_play(MM(Config()), *args, **kwargs)
        smaps = smaps_of_each_run[len(runs)]
        runs.append(smaps)
        return trail, {**end, "smaps": smaps or end["smaps"]}, wrong

    monkeypatch.setattr(conformance, "play", play)
    monkeypatch.setattr(host, "HostMM", lambda memcg=False: contextlib.nullcontext(None))
    monkeypatch.setattr(host, "host_settings", lambda config: contextlib.nullcontext())
    return runs


def _smaps_with(**fields):
    mm = MM(Config())
    a = mm.mmap(2 << 20)
    mm.write(a)
    return [{**mm.smaps(a), **fields}]


def test_a_host_run_that_parts_once_is_played_again_and_agrees(monkeypatch):
    runs = _script_the_host(monkeypatch, [_smaps_with(Referenced=0), None])
    result = conformance.compare("T1", {}, 2 << 20, False, STEPS, Config())
    assert len(runs) == 2
    assert result.status == "agrees"
    assert "first run: differs" in result.detail and "Referenced emulator 4 | host 0" in result.detail


def test_a_difference_the_host_shows_every_time_is_reported(monkeypatch):
    runs = _script_the_host(monkeypatch, [_smaps_with(Referenced=0)] * 3)
    result = conformance.compare("T1", {}, 2 << 20, False, STEPS, Config(), host_retries=2)
    assert len(runs) == 3
    assert result.status == "differs"
    assert result.detail == "at the end: smaps [0] Referenced emulator 4 | host 0"


def test_an_agreeing_run_is_played_once(monkeypatch):
    runs = _script_the_host(monkeypatch, [None, None])
    assert conformance.compare("T1", {}, 2 << 20, False, STEPS, Config()) == conformance.Result("T1", "agrees", "")
    assert len(runs) == 1


@pytest.mark.parametrize("ours, theirs, text", [
    ({"Rss": 4, "Swap": 0}, {"Rss": 8, "Swap": 0}, "Rss emulator 4 | host 8"),
    ([{"Rss": 4}, {"Rss": 8}], [{"Rss": 4}, {"Rss": 0}], "[1] Rss emulator 8 | host 0"),
    ({"Rss": 4}, {"Rss": 4, "KSM": 0}, "KSM emulator None | host 0"),
    ((4, 0), (8, 0), "emulator (4, 0) | host (8, 0)"),
])
def test_an_end_of_run_difference_names_the_fields_that_part(ours, theirs, text):
    assert conformance._dict_difference(ours, theirs) == text
