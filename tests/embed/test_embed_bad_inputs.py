"""`ssmrec embed` with bad inputs, run as a user runs it (a subprocess): every one fails with exit code 2
and one line naming the argument or path, before anything is written and, where the input folder is
involved, without changing one byte of it."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_cli

_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# As root, permissions are ignored; `setpriv` (util-linux) runs the CLI without the capabilities that
# bypass them (CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH), so the unwritable-folder cases still run.
_AS_PLAIN_USER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def _can_drop_root() -> bool:
    if not _ROOT or shutil.which("setpriv") is None:
        return False
    r = subprocess.run([*_AS_PLAIN_USER, "true"], capture_output=True)
    return r.returncode == 0


def _digest(folder):
    """{relative path: sha1} of every file and link under ``folder`` (links by their target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, folder)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """A private copy of the tiny world: cases that point --out at the input must not damage the shared one."""
    w = tmp_path_factory.mktemp("bad-inputs") / "world"
    shutil.copytree(tiny_world, w)
    return w


def _mmctr_copy(world, dst):
    dst.mkdir()
    for f in world.glob("*.parquet"):
        shutil.copy2(f, dst / f.name)
    shutil.copytree(world / "truth", dst / "truth")
    return dst


def _fails_in_one_line(args, *needles, plain_user=False):
    if plain_user and _ROOT:
        r = subprocess.run([*_AS_PLAIN_USER, sys.executable, "-m", "ssmrec.cli", "embed", "--no-progress",
                            *map(str, args)], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                           text=True, timeout=600)
    else:
        r = run_cli("embed", "--no-progress", *args, env={"OMP_NUM_THREADS": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("ssmrec: error: ")
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# Each path case: (tmp, world) -> (--out, extra args, needles, folders that must stay byte-identical).
def _out_is_items(tmp, w):
    return w, [], ["--out", str(w), "must differ from --items"], [w]


def _out_resolves_to_items(tmp, w):
    return w.parent / ".." / w.parent.name / w.name, [], ["--out", "must differ from --items"], [w]


def _out_links_to_items(tmp, w):
    link = tmp / "link-to-world"
    link.symlink_to(w, target_is_directory=True)
    return link, [], ["--out", str(link), "must differ from --items"], [w]


def _item_info_in_out(tmp, w):
    out = tmp / "o"
    out.mkdir()
    shutil.copy2(w / "item_info.parquet", out / "item_info.parquet")
    return out, ["--item-info", out / "item_info.parquet"], ["--item-info", str(out / "item_info.parquet")], [out, w]


def _out_is_mmctr_folder(tmp, w):
    out = _mmctr_copy(w, tmp / "data")
    return out, [], ["--out", str(out), "existing MM-CTR data folder", "item_info.parquet"], [out, w]


def _out_has_own_item_info(tmp, w):
    out = tmp / "items-only"
    out.mkdir()
    shutil.copy2(w / "item_info.parquet", out / "item_info.parquet")
    return out, [], ["--out", str(out), "item_info.parquet would be overwritten"], [out, w]


def _out_has_real_file_where_a_link_goes(tmp, w):
    out = tmp / "o"
    (out / "covers").mkdir(parents=True)
    (out / "covers" / "mine.png").write_bytes(b"not yours")
    return out, [], [str(out / "covers"), "is not a link"], [out, w]


def _out_below_a_file(tmp, w):
    (tmp / "afile").write_text("x")
    out = tmp / "afile" / "sub"
    return out, [], [str(out), "regular file"], [w]


def _out_is_a_file(tmp, w):
    (tmp / "afile").write_text("x")
    return tmp / "afile", [], [str(tmp / "afile"), "not a folder"], [w]


def _ro(tmp):
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro


def _out_in_unwritable_folder(tmp, w):
    out = _ro(tmp) / "new"
    return out, [], [str(out), "permission denied"], [w]


def _out_is_unwritable_folder(tmp, w):
    ro = _ro(tmp)
    return ro, [], [str(ro), "permission denied"], [w]


def _cache_dir_unwritable(tmp, w):
    cache = _ro(tmp) / "cache"
    return tmp / "o", ["--cache-dir", cache], [str(cache), "permission denied"], [w]


_UNWRITABLE = (_out_in_unwritable_folder, _out_is_unwritable_folder, _cache_dir_unwritable)
_needs_non_root = pytest.mark.skipif(_ROOT and not _can_drop_root(),
                                     reason="root ignores file permissions and setpriv cannot drop that")


@pytest.mark.parametrize("case", [
    _out_is_items, _out_resolves_to_items, _out_links_to_items, _item_info_in_out, _out_is_mmctr_folder,
    _out_has_own_item_info, _out_has_real_file_where_a_link_goes, _out_below_a_file, _out_is_a_file,
    pytest.param(_out_in_unwritable_folder, marks=_needs_non_root),
    pytest.param(_out_is_unwritable_folder, marks=_needs_non_root),
    pytest.param(_cache_dir_unwritable, marks=_needs_non_root),
], ids=lambda f: f.__name__.strip("_"))
def test_bad_out_fails_before_any_write(case, world, minilm, tmp_path):
    out, extra, needles, keep = case(tmp_path, world)
    before = {str(k): _digest(k) for k in keep}
    try:
        _fails_in_one_line(["--items", world, "--out", out, "--text-encoder", minilm, *extra], *needles,
                           plain_user=case in _UNWRITABLE)
    finally:
        for ro in tmp_path.glob("ro"):
            ro.chmod(0o700)
    for k in keep:  # not one byte of the input (or of a folder that is not ours) changed, nothing added
        assert _digest(k) == before[str(k)], k
    if case is _out_is_mmctr_folder:
        assert not (out / "item_emb.parquet").exists() and not (out / ".embed_cache").exists()
    if case is _cache_dir_unwritable:
        assert not out.exists()  # the --out folder is not left behind either


@pytest.mark.parametrize("extra,needles", [
    (["--dim", "301"], ["--dim 301", "number of items (300", "maximum allowed is 300"]),
    (["--dim", "0"], ["--dim", "positive integer", "0"]),
    (["--dim", "-3"], ["--dim", "positive integer", "-3"]),
    (["--batch-size", "0"], ["--batch-size", "positive integer", "0"]),
    (["--batch-size", "-1"], ["--batch-size", "positive integer", "-1"]),
    (["--weights", "0.5,0.5"], ["--weights needs both --image-encoder and --text-encoder"]),
], ids=["dim-above-n-items", "dim-0", "dim-negative", "batch-size-0", "batch-size-negative", "weights-one-encoder"])
def test_bad_text_only_arguments(extra, needles, tiny_world, minilm, tmp_path):
    out = tmp_path / "o"
    _fails_in_one_line(["--items", tiny_world, "--out", out, "--text-encoder", minilm, *extra], *needles)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("weights,needles", [
    ("0.7", ["--weights", "two finite numbers", "'0.7'"]),
    ("0.4,0.3,0.3", ["--weights", "two finite numbers", "'0.4,0.3,0.3'"]),
    ("a,b", ["--weights", "two numbers", "'a,b'"]),
    ("", ["--weights", "two numbers"]),
    ("nan,1", ["--weights", "finite"]),
    ("-0.5,1.5", ["--weights -0.5,1.5", ">= 0"]),
    ("0.6,0.3", ["--weights 0.6,0.3", "sum to 1", "0.9"]),
], ids=["one-number", "three-numbers", "not-numbers", "empty", "nan", "negative", "sum-not-1"])
def test_bad_weights(weights, needles, tiny_world, tiny_clip, minilm, tmp_path):
    out = tmp_path / "o"
    _fails_in_one_line(["--items", tiny_world, "--out", out, "--image-encoder", tiny_clip, "--text-encoder", minilm,
                        f"--weights={weights}"], *needles)
    assert not out.exists()


@pytest.mark.slow
def test_dim_above_the_encoder_width(tiny_world, tiny_clip, tmp_path):
    """The tiny CLIP's image vectors are 24-d: --dim 100 (<= 300 items) is refused before encoding."""
    out = tmp_path / "o"
    _fails_in_one_line(["--items", tiny_world, "--out", out, "--image-encoder", tiny_clip, "--dim", "100"],
                       "--dim 100", "encoder output width (image 24)", "maximum allowed is 24")
    assert not list(out.glob(".embed_cache/*/shard-*.npz")) and not (out / "item_emb.parquet").exists()
