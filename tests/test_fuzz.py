"""Fuzzing every reader with mutated and truncated files: a correct load or one project error, nothing else.

Each reader call runs in a separate worker process with a hard timeout and a cap on its address space, so a
hang, an interpreter crash or a runaway allocation is caught and reported instead of taking the run down.
Allowed outcomes: the file loads, or a :class:`bigtransfer.errors.BitError` subclass with a one-line message.
The number of inputs fuzzed per format is printed at the end of the module and kept in pytest's cache under
``bigtransfer/fuzz_counts``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import bigtransfer as bt
from bigtransfer.weights import save_npz, save_safetensors
from bigtransfer.weights.mindspore import encode_value, save_mindspore, to_mindcv_key
from bigtransfer.weights.timm import to_timm_key

CALL_TIMEOUT = 30.0  # seconds for one reader call; a healthy call takes milliseconds
ADDRESS_SPACE_HEADROOM = 3 << 30  # bytes the worker may map beyond what it holds after start-up
# A fixed example sequence by default (the suite is reproducible); BIGTRANSFER_FUZZ_EXAMPLES=N runs a longer,
# random hunt with N examples per format.
DEEP = int(os.environ.get("BIGTRANSFER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 150, deadline=timedelta(seconds=60), database=None, derandomize=not DEEP,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FULL_MODEL = settings(FUZZ, max_examples=DEEP // 5 or 16)

# --- the worker: one process that imports the readers once and runs one call per request ---------------------

WORKER = r"""
import json, os, resource, sys, traceback
proto = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # anything a reader prints goes to stderr, never into the protocol
import torch
torch.set_num_threads(1)
from bigtransfer.errors import BitError
from bigtransfer import create_model
from bigtransfer.weights import load_checkpoint
from bigtransfer.weights.convert import model_for, read_checkpoint
from bigtransfer.weights.npz import read_npz
from bigtransfer.weights.st import read_safetensors
from bigtransfer.weights.mindspore import read_ckpt
from bigtransfer.data.cifar import load_cifar
from bigtransfer.data.idx import read_idx
from bigtransfer.data.imagefolder import check_image, decode_image

MODEL = create_model("BiT-R14x0.5", num_classes=10)

def weights(path, raw):
    return [lambda: raw(path), lambda: load_checkpoint(MODEL, path),
            lambda: model_for(read_checkpoint(path), None, path)]

def image(path):
    def checked():
        ok = check_image(path)
        if not isinstance(ok, bool):
            raise TypeError(f"check_image returned {ok!r}")
    return [lambda: decode_image(path), checked]

READERS = {
    "npz": lambda p: weights(p, read_npz),
    "safetensors": lambda p: weights(p, read_safetensors),
    "ckpt": lambda p: weights(p, read_ckpt),
    "pth": lambda p: weights(p, read_checkpoint),
    "cifar-bin": lambda p: [lambda: load_cifar("cifar10", p.parent, "test")],
    "cifar-py": lambda p: [lambda: load_cifar("cifar10", p.parent, "test")],
    "idx": lambda p: [lambda: read_idx(p)],
    "png": image,
    "jpeg": image,
}

from pathlib import Path
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
limit = vm + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
proto.write("ready\n"); proto.flush()
for line in sys.stdin:
    req = json.loads(line)
    results = []
    for call in READERS[req["kind"]](Path(req["path"])):
        try:
            call()
            results.append({"outcome": "ok"})
        except BitError as e:
            results.append({"outcome": "bit", "type": type(e).__name__, "message": str(e)})
        except BaseException as e:
            results.append({"outcome": "other", "type": type(e).__name__, "message": str(e)[:500],
                            "traceback": traceback.format_exc()[-3000:]})
    proto.write(json.dumps(results) + "\n"); proto.flush()
"""


class Worker:
    """The reader process: restarted after a hang or a crash, which are reported as outcomes."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(ADDRESS_SPACE_HEADROOM)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"))  # noqa: SIM115 (the child owns it)
        assert self._line(120.0) == b"ready\n", f"worker did not start, see {self.log}"

    def _line(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def call(self, kind: str, path: Path) -> list[dict]:
        self.proc.stdin.write((json.dumps({"kind": kind, "path": str(path)}) + "\n").encode())
        self.proc.stdin.flush()
        line = self._line(CALL_TIMEOUT)
        if line is None:
            self.stop()
            self.start()
            return [{"outcome": "hang", "message": f"no answer within {CALL_TIMEOUT:.0f} s"}]
        if not line:
            code = self.proc.wait()
            self.start()
            return [{"outcome": "crash", "message": f"the reader process died with exit code {code}"}]
        return json.loads(line)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


COUNTS: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module")
def worker(tmp_path_factory, request):
    w = Worker(tmp_path_factory.mktemp("fuzzlog") / "worker.stderr")
    yield w
    w.stop()
    table = {kind: dict(c) for kind, c in sorted(COUNTS.items())}
    if getattr(request.config, "cache", None) is not None:
        request.config.cache.set("bigtransfer/fuzz_counts", table)
    lines = [f"  {kind:<20} {c['inputs']:>5} inputs: {c['read']:>5} read, {c['loaded']:>5} through every step, "
             f"{c['refused']:>5} refused with a one-line BitError" for kind, c in sorted(COUNTS.items())]
    print("\nfuzzed inputs per format:\n" + "\n".join(lines))


def check(worker: Worker, kind: str, path: Path, data: bytes, label: str | None = None) -> None:
    """Run every reader of ``kind`` on ``data``; anything but a load or a one-line BitError fails."""
    path.write_bytes(data)
    results = worker.call(kind, path)
    counts = COUNTS[label or kind]
    counts["inputs"] += 1
    for r in results:
        assert r["outcome"] in ("ok", "bit"), f"{kind}: {r['outcome']} {r.get('type', '')}: {r['message']}\n" \
                                              f"{r.get('traceback', '')}"
        if r["outcome"] == "bit":
            message = r["message"].strip()
            assert message and "\n" not in message, r["message"]
    counts["read"] += results[0]["outcome"] == "ok"  # the format's own reader accepted the bytes
    counts["loaded"] += all(r["outcome"] == "ok" for r in results)  # ... and so did every later step
    counts["refused"] += any(r["outcome"] == "bit" for r in results)


# --- seed files ------------------------------------------------------------------------------------------------

@dataclass
class Seed:
    """A valid file and where its structure lies: ``hot`` offsets and the decimal numbers inside its headers."""

    data: bytes
    hot: list[int]
    numbers: list[tuple[int, int]]


def seed(make) -> Seed:
    """``make(rng)`` builds a file; bytes equal in two builds with different values are the file's structure."""
    a, b = make(np.random.default_rng(1)), make(np.random.default_rng(2))
    n = min(len(a), len(b))
    same = np.frombuffer(a[:n], np.uint8) == np.frombuffer(b[:n], np.uint8)
    hot = np.flatnonzero(same).tolist() or list(range(len(a)))
    hot_set = set(hot)
    numbers = [(m.start(), m.end()) for m in re.finditer(rb"\d+", a)
               if all(i in hot_set for i in range(m.start(), m.end()))]
    return Seed(a, hot, numbers[:4000])


def _f32(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


SMALL_KEYS = {"root.conv.weight": (32, 3, 7, 7), "body.block1.unit01.gn1.weight": (32,),
              "body.block1.unit01.conv2.weight": (32, 32, 3, 3), "head.conv.bias": (10,)}


def small_state(rng) -> dict[str, np.ndarray]:
    return {k: _f32(rng, *shape) for k, shape in SMALL_KEYS.items()}


def npz_small(rng, compressed: bool = False) -> bytes:
    from bigtransfer.weights.npz import npz_key

    arrays = {npz_key(k): v.transpose(2, 3, 1, 0) if v.ndim == 4 else v for k, v in small_state(rng).items()}
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def st_small(rng, layout: str = "ours") -> bytes:
    from safetensors.torch import save

    state = {k: torch.from_numpy(v) for k, v in small_state(rng).items()}
    if layout == "timm":
        state = {to_timm_key(k): v for k, v in state.items()}
    return save(state, metadata={"model": "BiT-R14x0.5", "num_classes": "10", "mean": "0.5,0.5,0.5",
                                 "std": "0.5,0.5,0.5"})


def ckpt_small(rng) -> bytes:
    parts = [encode_value(to_mindcv_key(k), v) for k, v in small_state(rng).items()]
    # a training checkpoint also holds optimizer slots and counters, which the reader skips
    parts += [encode_value("global_step", np.array(7, dtype=np.int32)),
              encode_value("moments.conv1.weight", _f32(rng, 32, 3, 7, 7))]
    return b"".join(parts)


def pth_small(rng, zipped: bool = True) -> bytes:
    buf = io.BytesIO()
    state = {k: torch.from_numpy(v) for k, v in small_state(rng).items()}
    torch.save({"state_dict": state, "epoch": 3}, buf, _use_new_zipfile_serialization=zipped)
    return buf.getvalue()


def cifar_bin(rng) -> bytes:
    labels = np.array([3, 0, 9], dtype=np.uint8)[:, None]
    return np.concatenate([labels, rng.integers(0, 256, (3, 3072), dtype=np.uint8)], axis=1).tobytes()


def cifar_py(rng) -> bytes:
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 0, 9],
             b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"filenames": [b"a.png", b"b.png", b"c.png"]}
    return pickle.dumps(batch, protocol=4)


def idx(rng, gz: bool = False) -> bytes:
    arr = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">3I", *arr.shape) + arr.tobytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def image_bytes(rng, fmt: str, mode: str) -> bytes:
    arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()


def full_model(fmt: str):
    """A whole BiT-R14x0.5 checkpoint written by the project's own writers (the real load path)."""

    def make(rng) -> bytes:
        torch.manual_seed(int(rng.integers(1 << 30)))
        model = bt.create_model("BiT-R14x0.5", num_classes=10)
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bt-fuzz-seed-{os.getpid()}.{fmt}"
        try:
            if fmt == "npz":
                save_npz(model, tmp)
            elif fmt == "safetensors":
                save_safetensors(model, tmp, "BiT-R14x0.5")
            elif fmt == "ckpt":
                save_mindspore(model, tmp)
            else:
                torch.save(model.state_dict(), tmp)
            return tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)

    return make


SEEDS = {
    "npz": [lambda r: npz_small(r), lambda r: npz_small(r, compressed=True)],
    "safetensors": [lambda r: st_small(r), lambda r: st_small(r, "timm")],
    "ckpt": [ckpt_small],
    "pth": [lambda r: pth_small(r), lambda r: pth_small(r, zipped=False)],
    "cifar-bin": [cifar_bin],
    "cifar-py": [cifar_py],
    "idx": [lambda r: idx(r), lambda r: idx(r, gz=True)],
    "png": [lambda r: image_bytes(r, "PNG", "RGB"), lambda r: image_bytes(r, "PNG", "P"),
            lambda r: image_bytes(r, "PNG", "LA")],
    "jpeg": [lambda r: image_bytes(r, "JPEG", "RGB"), lambda r: image_bytes(r, "JPEG", "L")],
}
_SEED_CACHE: dict[tuple[str, int], Seed] = {}


def get_seed(kind: str, i: int) -> Seed:
    if (kind, i) not in _SEED_CACHE:
        make = SEEDS[kind][i] if i >= 0 else full_model(kind)
        _SEED_CACHE[(kind, i)] = seed(make)
    return _SEED_CACHE[(kind, i)]


# --- mutations -------------------------------------------------------------------------------------------------

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00" * 4, b"\xff" * 4, b"\xff" * 8, b"\x80" * 11,
               struct.pack("<I", 1 << 31), struct.pack("<Q", 1 << 40), struct.pack("<Q", (1 << 64) - 1),
               struct.pack(">I", 1 << 31), struct.pack(">I", 0xFFFFFFFF), b"\xff\xff\xff\xff\x0f",
               b"{", b"}", b'"', b"\\", b"(", b")", b"'", b"PK\x03\x04", b"PK\x01\x02"]
NUMBERS = [b"0", b"1", b"-1", b"3", b"1000000000000", b"4294967296", b"99999999999999999999999", b""]


@st.composite
def mutated(draw, kind: str, full: bool = False) -> tuple[int, bytes]:
    """(seed index, bytes): a seed file with up to four edits at its structure or anywhere, maybe truncated."""
    i = -1 if full else draw(st.integers(0, len(SEEDS[kind]) - 1))
    s = get_seed(kind, i)
    data = bytearray(s.data)
    pos = st.sampled_from(s.hot) if full else st.one_of(st.sampled_from(s.hot), st.integers(0, len(data) - 1))
    ops = st.one_of(
        st.tuples(st.just("put"), pos, st.sampled_from(INTERESTING)),
        st.tuples(st.just("put"), pos, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        *([st.tuples(st.just("number"), st.sampled_from(s.numbers), st.sampled_from(NUMBERS))] if s.numbers else []),
    )
    # numbers are replaced first, from the end, so the offsets found in the seed stay valid
    plan = draw(st.lists(ops, min_size=1, max_size=4))
    for _, where, arg in sorted((o for o in plan if o[0] == "number"), key=lambda o: -o[1][0]):
        data[where[0]:where[1]] = arg
    for op, where, arg in (o for o in plan if o[0] != "number"):
        where = min(where, len(data))
        if op == "put":
            data[where:where + len(arg)] = arg
        elif op == "insert":
            data[where:where] = arg
        else:
            del data[where:where + arg]
    if draw(st.booleans()) and len(data) > 1:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return i, bytes(data)


# --- the fuzz tests --------------------------------------------------------------------------------------------

def _target(folder: Path, kind: str, i: int = 0) -> Path:
    """Where the fuzzed bytes go; the CIFAR layouts also need their (valid) class-name file next to it."""
    if kind == "cifar-bin":
        (folder / "batches.meta.txt").write_text("\n".join(f"class{c}" for c in range(10)) + "\n")
        return folder / "test_batch.bin"
    if kind == "cifar-py":
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % c for c in range(10)]}, 4))
        return folder / "test_batch"
    if kind == "idx":
        return folder / ("fuzzed.idx.gz" if i == 1 else "fuzzed.idx")
    return folder / f"fuzzed.{ {'jpeg': 'jpg'}.get(kind, kind)}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SEEDS))
def test_seed_files_load(worker, kind, tmp_path):
    """Every seed loads through all its readers, so the fuzzing starts from files that work."""
    for i in range(len(SEEDS[kind])):
        target = _target(tmp_path, kind, i)
        target.write_bytes(get_seed(kind, i).data)
        results = worker.call(kind, target)
        assert results[0]["outcome"] == "ok", (kind, i, results)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SEEDS))
def test_mutated_and_truncated_files_load_or_raise_one_project_error(worker, kind, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"fuzz-{kind}")

    @FUZZ
    @given(case=mutated(kind))
    def run(case: tuple[int, bytes]) -> None:
        i, data = case
        check(worker, kind, _target(folder, kind, i), data)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "safetensors", "ckpt", "pth"])
def test_mutated_whole_model_checkpoints(worker, kind, tmp_path_factory):
    """The real load path: whole BiT-R14x0.5 files, mutated where their structure lies."""
    target = _target(tmp_path_factory.mktemp(f"fuzz-model-{kind}"), kind)
    target.write_bytes(get_seed(kind, -1).data)
    assert all(r["outcome"] == "ok" for r in worker.call(kind, target))

    @FULL_MODEL
    @given(case=mutated(kind, full=True))
    def run(case: tuple[int, bytes]) -> None:
        check(worker, kind, target, case[1], label=f"{kind} (model)")

    run()


# --- headers that claim a huge tensor: refused before any allocation -----------------------------------------

HUGE = 10**12  # elements


def npy(header: str, body: bytes) -> bytes:
    """A version 1.0 ``.npy`` file with this header dict (padded as numpy pads it)."""
    h = header.encode("latin1")
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + body


def huge_npz() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("resnet/head/conv2d/bias.npy",
                   npy(f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({HUGE},), }}", b"\0" * 64))
    return out.getvalue()


def huge_safetensors() -> bytes:
    header = json.dumps({"root.conv.weight": {"dtype": "F32", "shape": [HUGE], "data_offsets": [0, 4 * HUGE]}})
    return struct.pack("<Q", len(header)) + header.encode() + b"\x00" * 64


def huge_safetensors_shape_only() -> bytes:
    header = json.dumps({"root.conv.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 64]}})
    return struct.pack("<Q", len(header)) + header.encode() + b"\x00" * 64


def huge_ckpt() -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))

    def ld(field: int, payload: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    tensor = b"".join(varint(1 << 3) + varint(d) for d in (10**6, 10**6)) + ld(2, b"Float32") + ld(3, b"\0" * 64)
    return ld(1, ld(1, b"conv1.weight") + ld(2, tensor))


class _HugeArray:
    """Pickles like an ndarray whose placeholder (or state) claims 10^12 elements over a few bytes."""

    def __init__(self, in_placeholder: bool) -> None:
        self.in_placeholder = in_placeholder

    def __reduce__(self):
        from bigtransfer.data.safepickle import _reconstruct

        if self.in_placeholder:
            return _reconstruct, (np.ndarray, (HUGE // 3072, 3072), np.dtype(np.uint8))
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (HUGE // 3072, 3072), np.dtype(np.uint8), False, b"\0" * 64)


def huge_cifar(in_placeholder: bool) -> bytes:
    return pickle.dumps({b"data": _HugeArray(in_placeholder), b"labels": [0]}, protocol=4)


def huge_idx(gz: bool) -> bytes:
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10**4, 10**4, 10**4) + b"\0" * 64
    return gzip.compress(raw) if gz else raw


def huge_idx_overflow() -> bytes:
    """Dims whose product is 2^64: an int64 product wraps to 0 and would match an empty body."""
    return bytes([0, 0, 0x08, 4]) + struct.pack(">4I", 1 << 16, 1 << 16, 1 << 16, 1 << 16)


@pytest.mark.slow
@pytest.mark.parametrize("kind,make,needle", [
    ("npz", huge_npz, r"claims shape \(1000000000000,\)"),
    ("safetensors", huge_safetensors, r"lies past the end|claims|mismatch|invalid"),
    ("safetensors", huge_safetensors_shape_only, r"corrupt|mismatch|invalid"),
    ("ckpt", huge_ckpt, r"claims shape \[1000000, 1000000\]"),
    ("cifar-py", lambda: huge_cifar(True), r"refused to load an array placeholder"),
    ("cifar-py", lambda: huge_cifar(False), r"corrupt or truncated pickle"),
    ("idx", lambda: huge_idx(False), r"announces 1000000000000"),
    ("idx", lambda: huge_idx(True), r"announces 1000000000000"),
    ("idx", huge_idx_overflow, r"announces 18446744073709551616"),
], ids=["npz", "safetensors-offsets", "safetensors-shape", "ckpt", "cifar-placeholder", "cifar-state", "idx",
        "idx-gz", "idx-overflow"])
def test_a_header_claiming_a_huge_tensor_is_refused_before_allocation(worker, tmp_path, kind, make, needle):
    data = make()
    target = _target(tmp_path, kind, 1 if data[:2] == b"\x1f\x8b" else 0)
    target.write_bytes(data)
    start = time.perf_counter()
    results = worker.call(kind, target)
    took = time.perf_counter() - start
    first = results[0]
    assert first["outcome"] == "bit", first
    assert re.search(needle, first["message"]), first["message"]
    assert all(r["outcome"] == "bit" for r in results), results
    assert took < 5, took  # a refusal from the header, not an allocation or a read of 10^12 elements
    COUNTS["huge headers"]["inputs"] += 1
    COUNTS["huge headers"]["refused"] += 1
