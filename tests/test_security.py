"""Nothing unpickles an untrusted file: a booby-trapped .pth is refused, and src/ holds no unsafe loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import bigtransfer as bt
from bigtransfer.cli.main import main
from bigtransfer.errors import CheckpointError
from bigtransfer.weights import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


class Trap:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_payload_in_pth_is_refused_and_never_runs(tmp_path, zipped):
    marker = tmp_path / "PWNED"
    model = bt.create_model("BiT-R14x0.5")
    state = {**model.state_dict(), "trap": Trap(marker)}
    path = tmp_path / "evil.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_pickle_payload_disguised_as_another_format_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.npz"  # a torch zip named like an npz
    torch.save({"trap": Trap(marker)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(bt.create_model("BiT-R14x0.5"), path)
    assert not marker.exists()


_RULES = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\b(cPickle|dill|joblib)\.load"), "another unpickler"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
]


def _calls(text: str, func: str) -> list[str]:
    """The argument text of every call to ``func`` (balanced parentheses)."""
    out = []
    for m in re.finditer(re.escape(func) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1])
    return out


def unsafe_lines(text: str) -> list[str]:
    """What the scanner objects to in one source text."""
    found = [name for rx, name in _RULES if rx.search(text)]
    found += ["torch.load without weights_only=True" for args in _calls(text, "torch.load")
              if not re.search(r"weights_only\s*=\s*True", args)]
    found += ["np.load without allow_pickle=False" for args in _calls(text, "np.load")
              if not re.search(r"allow_pickle\s*=\s*False", args)]
    return found


def test_the_scanner_catches_what_it_should():
    assert unsafe_lines("x = torch.load(path, map_location='cpu')")
    assert unsafe_lines("x = torch.load(\n    path,\n    weights_only=False)")
    assert not unsafe_lines("x = torch.load(path, map_location=dict(a=1), weights_only=True)")
    assert unsafe_lines("pickle.loads(blob)") and unsafe_lines("np.load(p, allow_pickle=True)")
    assert unsafe_lines("np.load(p)") and not unsafe_lines("np.load(p, allow_pickle=False)")


def test_src_has_no_unsafe_deserialization():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    problems = [f"{f.relative_to(SRC)}: {p}" for f in files for p in unsafe_lines(f.read_text(encoding="utf-8"))]
    assert problems == []


# --- archive extraction: the Fashion-MNIST .deb is unpacked by dpkg-deb (GNU tar) into a temporary folder ----------

def _tar(members: list[tuple[str, str, bytes | str | None]], gz: bool = False) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                t.addfile(info)
            else:
                info.size, info.mode = len(payload), 0o644
                t.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _ar_member(name: str, payload: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(payload):<10}`\n".encode()
    return header + payload + (b"\n" if len(payload) % 2 else b"")


def hostile_deb(outside: Path) -> bytes:
    """A .deb whose data tries ``..``, an absolute path and writing through symlinks that point outside."""
    control = _tar([("./", "dir", None), ("./control", "file", b"Package: dataset-fashion-mnist\nVersion: 1.0\n"
                                                               b"Architecture: all\nMaintainer: t <t@example.org>\n"
                                                               b"Description: t\n")], gz=True)
    target = "./usr/share/datasets/fashion-mnist"
    data = _tar([("./", "dir", None), ("./usr/", "dir", None),
                 ("../escape.txt", "file", b"x"),
                 (str(outside / "absolute.txt"), "file", b"x"),
                 ("./usr/link", "symlink", str(outside)),
                 ("./usr/link/through-absolute-link.txt", "file", b"x"),
                 ("./usr/rel", "symlink", "../../../outside"),
                 ("./usr/rel/through-relative-link.txt", "file", b"x"),
                 (f"{target}/train-images-idx3-ubyte", "file", b"\0\0\x08\x01\0\0\0\0")])
    return (b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.gz", control)
            + _ar_member("data.tar", data))


def test_fashion_deb_cannot_write_outside_its_target(tmp_path, monkeypatch):
    import os
    import shutil

    from bigtransfer.data import fashion
    from bigtransfer.errors import DataError

    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not available")
    outside = tmp_path / "outside"
    outside.mkdir()
    deb = tmp_path / "dataset-fashion-mnist_1.0_all.deb"
    deb.write_bytes(hostile_deb(outside))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text(f'#!/bin/sh\n[ "$1" = download ] && cp {deb} . && exit 0\nexit 100\n')
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cache = tmp_path / "cache" / "datasets"
    with pytest.raises(DataError, match="Fashion-MNIST is not available"):
        fashion.ensure_fashion_mnist(cache)
    assert list(outside.iterdir()) == []  # nothing through the symlinks, nothing at the absolute path
    assert not (cache / "escape.txt").exists() and not (cache.parent / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert list(cache.iterdir()) == []  # the half-unpacked temporary tree is gone, nothing was moved into place
