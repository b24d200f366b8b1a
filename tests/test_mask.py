"""`exec --mask` (bridge/runtime/mask.py): every delivered value of 6 bytes or more is concealed in
the child's output, whole, split across writes or at a line end; nothing else is held back."""

from __future__ import annotations

import json
import random
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.runtime.mask import MASK, Mask
from tests.harness import Bridge


def _through(mask: Mask, pieces: list[bytes]) -> bytes:
    stream, out = mask.stream(), b""
    for piece in pieces:
        out += stream.feed(piece)
    return out + stream.flush()


def test_split_anywhere_is_masked_as_whole() -> None:
    """Random values in random text, cut into random writes, come out exactly as the whole text
    with every value replaced (leftmost, longest first): a split never lets a value or part of it through."""
    rng = random.Random(7)
    for _ in range(2000):
        alphabet = b"abs\n"
        values = {bytes(rng.choice(alphabet) for _ in range(rng.randint(6, 10))) for _ in range(rng.randint(1, 4))}
        mask = Mask(values)
        text = b"".join(rng.choice(sorted(values)) if rng.random() < 0.4
                        else bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
                        for _ in range(rng.randint(1, 10)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert mask.compiled.pattern is not None
        assert _through(mask, pieces) == mask.compiled.pattern.sub(MASK, text), (values, text, cuts)


def test_only_a_possible_beginning_is_held() -> None:
    """What cannot begin a value is written at once; a value's beginning waits for the next write."""
    stream = Mask([b"hunter22"]).stream()
    assert stream.feed(b"user=admin\n") == b"user=admin\n"
    assert stream.feed(b"pass=hun") == b"pass="
    assert stream.feed(b"ter22!\n") == MASK + b"!\n"
    assert stream.feed(b"hunt") == b""
    assert stream.feed(b"ing season\n") == b"hunting season\n"
    assert stream.flush() == b""


def test_short_values_are_not_masked_and_new_ones_are() -> None:
    """Values under 6 bytes are left alone (they would hide ordinary words); values added later are masked."""
    mask = Mask([b"admin", b"s3cr3t-1"])
    assert _through(mask, [b"admin s3cr3t-1"]) == b"admin " + MASK
    mask.add([b"rotated-2"])
    assert _through(mask, [b"s3cr3t-1 rota", b"ted-2"]) == MASK + b" " + MASK


def test_longer_value_wins_over_its_prefix() -> None:
    """Of two values where one begins the other, the longer is concealed whole, also split between them."""
    mask = Mask([b"secret", b"secret-and-more"])
    assert _through(mask, [b"x secret-and", b"-more y secret z"]) == b"x " + MASK + b" y " + MASK + b" z"


@pytest.fixture
def out() -> Iterator[Path]:
    d = Path("/dev/shm") / f"sb-mask-{uuid.uuid4().hex}"
    yield d
    shutil.rmtree(d, ignore_errors=True)


#: prints each value whole, split across two flushed writes with a pause between, at a line end
#: without a newline at the very end, and once on stderr
CHILD = r"""
import os, sys, time
token, pem = os.environ["API_TOKEN"], open(sys.argv[1]).read()
sys.stdout.write("token: " + token + " in a line\n"); sys.stdout.flush()
half = len(token) // 2
sys.stdout.write("split: " + token[:half]); sys.stdout.flush(); time.sleep(0.3)
sys.stdout.write(token[half:] + " done\n"); sys.stdout.flush()
sys.stdout.write("file: " + pem + "\n"); sys.stdout.flush()
sys.stderr.write("err: " + token + "\n"); sys.stderr.flush()
sys.stdout.write("end: " + token); sys.stdout.flush()
"""


def test_exec_mask_conceals_stdout_and_stderr(tmp_path: Path, out: Path) -> None:
    """A child printing an env value and a file's content whole, split across writes, at line ends
    and on stderr: the output holds the mask and never the values; the rest passes unchanged."""
    token, pem = "tok-" + uuid.uuid4().hex, "-----BEGIN KEY-----\nAAAA" + uuid.uuid4().hex + "\n-----END KEY-----"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "key.pem").write_text(pem)
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\nlisten: null\nproviders:\n  env: {{type: env}}\n"
                      f"  files: {{type: file, base_dir: {tmp_path / 'src'}}}\n"
                      f"secrets:\n  key.pem: {{provider: files, ref: key.pem}}\n"
                      f"env:\n  API_TOKEN: {{provider: env, ref: SOURCE_TOKEN}}\n")
    bridge = Bridge(config, options=("--log-format", "json"), env={"SOURCE_TOKEN": token})
    proc = bridge("exec", "--mask", "--", sys.executable, "-c", CHILD, str(out / "key.pem"))
    stdout, stderr = proc.stdout, proc.stderr
    assert token not in stdout + stderr and "AAAA" not in stdout + stderr
    concealed = MASK.decode()
    assert stdout.splitlines() == [f"token: {concealed} in a line", f"split: {concealed} done",
                                   f"file: {concealed}", f"end: {concealed}"]
    assert f"err: {concealed}" in stderr.splitlines()


def test_without_mask_the_child_has_the_terminal_streams(tmp_path: Path, out: Path) -> None:
    """Without --mask the child writes to the bridge's own stdout directly (no pipe in between)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\nlisten: null\nproviders:\n  env: {{type: env}}\n"
                      f"env:\n  API_TOKEN: {{provider: env, ref: SOURCE_TOKEN}}\n")
    target = tmp_path / "stdout"
    bridge = Bridge(config, env={"SOURCE_TOKEN": "visible-token"})
    with open(target, "wb") as stdout:  # the bridge's own stdout is this file, not the harness's log
        bridge.start("exec", "--", "/bin/sh", "-c", 'echo "$API_TOKEN"; readlink /proc/$$/fd/1', stdout=stdout)
    assert bridge.wait(60) == 0, bridge.output()
    assert target.read_text().splitlines() == ["visible-token", str(target)]


def test_exec_mask_conceals_template_fields_and_files_already_there(tmp_path: Path, out: Path) -> None:
    """A field a template reads (the password inside DATABASE_URL) is concealed on its own, and so is
    a file a former sync wrote and this start found unchanged."""
    password = "pw-" + uuid.uuid4().hex
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "key").write_text("key-" + uuid.uuid4().hex)
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\nlisten: null\nproviders:\n  env: {{type: env}}\n"
                      f"  files: {{type: file, base_dir: {tmp_path / 'src'}}}\n"
                      f"secrets:\n  key: {{provider: files, ref: key}}\n"
                      "env:\n  DATABASE_URL:\n    template: 'postgres://{{ db.user }}:{{ db.password }}@db/app'\n"
                      "    values: {db: {provider: env, ref: SOURCE_DB}}\n")
    bridge = Bridge(config, env={"SOURCE_DB": json.dumps({"user": "app", "password": password, "host": "db.internal"})})
    bridge("sync")
    child = ("import os, urllib.parse; u = urllib.parse.urlsplit(os.environ['DATABASE_URL']); "
             f"print('password', u.password); print('key', open({str(out / 'key')!r}).read()); "
             "print('host db.internal')")
    proc = bridge("exec", "--mask", "--", sys.executable, "-c", child)
    concealed = MASK.decode()
    assert proc.stdout.splitlines() == [f"password {concealed}", f"key {concealed}", "host db.internal"]
