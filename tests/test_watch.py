"""The config watch of `run` (bridge/runtime/watch.py; its drift watch is in test_drift_watch.py):
the names a config path runs through, and a reload asked only when one of them changes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.runtime.inotify import Watcher
from bridge.runtime.watch import ConfigWatch, watched_paths


def _configmap(mount: Path, version: int) -> Path:
    """What the kubelet does for a ConfigMap: a new folder, then `..data` swapped by rename."""
    folder = mount / f"..2026_11_28_00_00_0{version}.000"
    folder.mkdir()
    (folder / "config.yaml").write_text(f"version {version}\n")
    (mount / "..data_tmp").symlink_to(folder.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "config.yaml").is_symlink():
        (mount / "config.yaml").symlink_to("..data/config.yaml")
    return folder / "config.yaml"


def test_watched_paths_of_a_configmap(tmp_path: Path) -> None:
    """A ConfigMap's config: the name, the `..data` link and the file it leads to now."""
    real = _configmap(tmp_path, 1)
    assert watched_paths(tmp_path / "config.yaml") == {
        str(tmp_path / "config.yaml"), str(tmp_path / "..data"), str(real)}


def test_watched_paths_through_links_and_dotdot(tmp_path: Path) -> None:
    """Relative and absolute links and `..` parts are followed as the kernel would; a missing name
    is kept as it is named."""
    (tmp_path / "etc" / "app").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "real.yaml").write_text("x")
    (tmp_path / "etc" / "app" / "link.yaml").symlink_to("../../elsewhere/real.yaml")
    (tmp_path / "abs").symlink_to(tmp_path / "etc")
    named = tmp_path / "abs" / "app" / "link.yaml"
    assert watched_paths(named) == {str(named), str(tmp_path / "abs"), str(tmp_path / "etc" / "app" / "link.yaml"),
                                    str(tmp_path / "elsewhere" / "real.yaml")}
    assert watched_paths(tmp_path / "missing.yaml") == {str(tmp_path / "missing.yaml")}


class Watching:
    """A ConfigWatch on one watcher, counting its reload requests; `settle` returns once every
    event before it has been told."""

    def __init__(self, path: Path) -> None:
        self.watcher = Watcher()
        self.asked = 0
        self.watch = ConfigWatch(path, self._ask, self.watcher)
        self.watch.start()
        self._barriers = 0

    def _ask(self) -> None:
        self.asked += 1

    def settle(self, folder: Path) -> None:
        self._barriers += 1
        name = f"barrier-{self._barriers}"
        seen = threading.Event()
        handle = self.watcher.add(str(folder), lambda _f, n, _m: seen.set() if n == name else None)
        (folder / name).touch()
        assert seen.wait(10)
        self.watcher.remove(handle)

    def asked_after(self, action: object, folder: Path) -> int:
        before = self.asked
        action()  # type: ignore[operator]
        self.settle(folder)
        return self.asked - before


@pytest.fixture
def configmap(tmp_path: Path) -> Iterator[tuple[Path, Watching]]:
    _configmap(tmp_path, 1)
    watching = Watching(tmp_path / "config.yaml")
    yield tmp_path, watching
    watching.watch.stop()
    watching.watcher.stop()


def test_only_the_config_and_its_links_ask_for_a_reload(configmap: tuple[Path, Watching]) -> None:
    """A log or a hook's output beside the config asks nothing; a `..data` swap does, and after
    `refresh` (as each reload does) an edit of the new file does too."""
    mount, watching = configmap
    assert watching.asked_after(lambda: (mount / "app.log").write_text("a line\n"), mount) == 0
    assert watching.asked_after(lambda: _configmap(mount, 2), mount) >= 1
    watching.watch.refresh()
    new = mount / os.readlink(mount / "..data")
    assert watching.asked_after(lambda: (new / "config.yaml").write_text("edited\n"), new) >= 1
    assert watching.asked_after(lambda: (new / "other.yaml").write_text("x\n"), new) == 0


def test_a_plain_config_edit_asks_for_a_reload(tmp_path: Path) -> None:
    """Editing a plain config file asks for a reload; reading it asks nothing."""
    config = tmp_path / "c.yaml"
    config.write_text("a\n")
    watching = Watching(config)
    try:
        assert watching.asked_after(lambda: config.read_text(), tmp_path) == 0
        assert watching.asked_after(lambda: config.write_text("b\n"), tmp_path) >= 1
    finally:
        watching.watch.stop()
        watching.watcher.stop()
