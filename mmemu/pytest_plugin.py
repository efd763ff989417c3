"""mmemu's pytest plugin (registered as the ``pytest11`` entry point ``mmemu``).

Fixtures:

``mm``              a fresh :class:`mmemu.MM`, closed after the test
``mmemu_config``    the :class:`mmemu.Config` it is built from

Settings, later ones winning: the ini option ``mmemu_config`` (lines of KEY=VALUE), the command
line's ``--mmemu-set KEY=VALUE`` (repeatable), and a test's ``@pytest.mark.mmemu(arch="arm64")``.
``kernel=6.12`` brings that version's behaviour (Config.for_kernel).

Assertions for the tests themselves are in :mod:`mmemu.testing`.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("mmemu", "mmemu: the emulated kernel's settings for the mm fixture")
    group.addoption("--mmemu-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a mmemu.Config field for the mm fixture (repeatable): arch=arm64, kernel=6.12")
    parser.addini("mmemu_config", type="linelist", default=[],
                  help="mmemu.Config fields for the mm fixture, one KEY=VALUE per line")


def pytest_configure(config):
    config.addinivalue_line("markers", "mmemu(**fields): mmemu.Config fields for this test's mm fixture")
    _session_settings(config)                  # a bad setting stops the run before any test


def _session_settings(config) -> dict:
    from .cli import UsageError, parse_settings
    try:
        fields = parse_settings(config.getini("mmemu_config"))
        fields.update(parse_settings(config.getoption("--mmemu-set")))
    except UsageError as exc:
        raise pytest.UsageError(f"mmemu: {exc}") from None
    return fields


def _settings(request) -> dict:
    fields = _session_settings(request.config)
    for marker in reversed(list(request.node.iter_markers("mmemu"))):
        fields.update(marker.kwargs)
    return fields


@pytest.fixture
def mmemu_config(request):
    """The Config of the ini option, the command line and the test's mmemu marker."""
    from .config import Config
    return Config.from_fields(_settings(request))


@pytest.fixture
def mm(mmemu_config):
    """A fresh emulated process (an MM of its own machine); after the test its machine's
    invariants are checked (MM.check) and it is closed."""
    from .mm import MM
    process = MM(mmemu_config)
    yield process
    process.check()
    process.close()
