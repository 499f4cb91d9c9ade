"""`ldseg train` runs on tcmalloc when it is installed (else glibc's malloc with huge pages),
inference on tcmalloc up to the largest activations measured and on glibc's beyond them;
the numbers are the same on each, and children get the user's environment back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import easy_dataset

from ldseg import allocator

CLI = [sys.executable, "-m", "ldseg.cli"]
# Segment a tiny random image with a seeded model: a checksum of the probabilities.
PROBE = """
import hashlib, torch
from ldseg.config import ModelConfig
from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.inference.sampling import segment_batch
from ldseg.model.networks import LDSeg
from ldseg import allocator
torch.manual_seed(0)
cfg = ModelConfig(spatial_dims=2, in_channels=1, num_classes=3, label_encoder_widths=(8, 8, 8),
    image_encoder_stem=8, image_encoder_widths=(8, 8), label_decoder_widths=(8, 8),
    denoiser_widths=(8, 8), denoiser_attention=(False, True), denoiser_res_blocks=1,
    latent_channels=2, image_latent_channels=2, attention_head_channels=8)
model = LDSeg(cfg).eval()
with torch.inference_mode():
    out = segment_batch(model, NoiseSchedule("cosine", 1000), torch.randn(2, 1, 64, 48), steps=4,
                        samples=2, generator=torch.Generator().manual_seed(0))
print(allocator.describe())
print(hashlib.sha256(out.mean_probs.numpy().tobytes()).hexdigest())
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", allocator.ENV)
           and not k.startswith("LDSEG_ALLOCATOR_")}
    return {**env, **extra}


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=clean_env(**env),
                          timeout=300)


@pytest.fixture(scope="module")
def tcmalloc() -> str:
    library = allocator.find_fast_malloc()
    if library is None:
        reason = "tcmalloc is not installed (make setup installs libtcmalloc-minimal4)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return library


def runtime(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["runtime"]


def test_training_and_small_grid_inference_run_on_tcmalloc(tcmalloc, tmp_path):
    data = easy_dataset(tmp_path / "ds", n=4, size=32)
    out = run(CLI + ["train", str(data), "-o", str(tmp_path / "run"), "--grid", "32,32",
                     "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2",
                     "--val-fraction", "0", "--no-progress"])
    assert out.returncode == 0, out.stderr
    assert "malloc: libtcmalloc" in out.stdout, out.stdout
    predict = CLI + ["predict", "-m", str(tmp_path / "run"), "-i", str(data / "imagesTr"),
                     "--steps", "2", "--no-pictures", "--no-progress"]
    out = run([*predict, "-o", str(tmp_path / "pred")])
    assert out.returncode == 0, out.stderr
    assert "malloc: libtcmalloc" in out.stdout, out.stdout  # a 32x32 grid: small blocks
    out = run([*predict, "-o", str(tmp_path / "pred_glibc")], LDSEG_ALLOCATOR="system")
    assert "malloc: glibc malloc\n" in out.stdout, out.stderr
    out = run(CLI + ["robustness", "-m", str(tmp_path / "run"), "-d", str(data), "--sigmas", "0",
                     "--steps", "1", "--cases", "c00", "-o", str(tmp_path / "rob"),
                     "--no-progress"])
    assert out.returncode == 0, out.stderr
    assert "malloc: libtcmalloc" in out.stdout, out.stdout  # -m given once: a list of runs
    info = runtime(run(CLI + ["info", str(tmp_path / "run")]))
    assert info["malloc"] == "glibc malloc"  # not a training or inference command
    assert "tcmalloc" in runtime(run(CLI + ["info"], LDSEG_ALLOCATOR="tcmalloc"))["malloc"]
    # A script that calls into ldseg is not executed again (it could have done work already).
    out = run([sys.executable, "-c", "from ldseg import allocator\n"
               "allocator.reexec_with_fast_malloc('train')\nprint(allocator.describe())"])
    assert out.stdout.strip() == "glibc malloc with transparent huge pages", out.stderr


def test_system_choice_and_user_preload_are_kept(tcmalloc, tmp_path):
    data = easy_dataset(tmp_path / "ds", n=4, size=32)
    out = run(CLI + ["train", str(data), "-o", str(tmp_path / "run"), "--grid", "32,32",
                     "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "2",
                     "--val-fraction", "0", "--no-progress"], LDSEG_ALLOCATOR="system")
    assert out.returncode == 0, out.stderr
    assert "malloc: glibc malloc\n" in out.stdout  # no huge pages either: the user said system
    # A malloc the user preloads is theirs: no second one, no re-execution.
    info = runtime(run(CLI + ["info"], LD_PRELOAD=tcmalloc))
    assert "tcmalloc" in info["malloc"]


def test_executes_itself_once_and_never_over_a_users_preload(tcmalloc, tmp_path):
    # A stand-in named `ldseg` that counts its own starts: the real re-execution repeats it.
    command = tmp_path / "ldseg"
    command.write_text("import sys\n"
                       "with open(sys.argv[1], 'a') as f:\n    f.write('start\\n')\n"
                       "from ldseg import allocator\n"
                       "allocator.reexec_with_fast_malloc('train')\n"
                       "print(allocator.describe())\n")
    starts = tmp_path / "starts"
    out = run([sys.executable, str(command), str(starts)])
    assert "tcmalloc" in out.stdout, out.stderr
    assert starts.read_text().count("start") == 2  # the first start, then once on tcmalloc
    starts.unlink()
    out = run([sys.executable, str(command), str(starts)], LD_PRELOAD=tcmalloc)
    assert "tcmalloc" in out.stdout, out.stderr
    assert starts.read_text().count("start") == 1  # the user's preload is kept as it is


def test_bad_allocator_choice_is_one_line_error(tmp_path):
    missing = tmp_path / "libnothing.so"
    out = run(CLI + ["info"], LDSEG_ALLOCATOR=str(missing))
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert str(missing) in out.stderr and "no such library" in out.stderr


def test_choice_per_command(tcmalloc):
    assert allocator.choose("train", "auto") == tcmalloc
    assert allocator.choose("demo", "auto") == tcmalloc
    assert allocator.choose("predict", "auto") is None  # no readable model: glibc's
    assert allocator.choose("robustness", "auto", 32 * 2**20) == tcmalloc
    assert allocator.choose("predict", "auto", allocator.INFERENCE_BLOCK_LIMIT) == tcmalloc
    assert allocator.choose("predict", "auto", allocator.INFERENCE_BLOCK_LIMIT + 1) is None
    assert allocator.choose("evaluate", "auto", 1024) is None
    assert allocator.choose("predict", "tcmalloc", 2**40) == tcmalloc
    assert allocator.choose("train", "system") is None


def test_inference_block_from_the_runs_config_and_model_file(tmp_path):
    from ldseg.config import ModelConfig, RunConfig, save_run_config
    from ldseg.training.checkpoint import save_model

    # The reference widths: 32 channels at full resolution.
    assert allocator.activation_bytes(ModelConfig(), (512, 512)) == 512 * 512 * 32 * 4
    assert allocator.activation_bytes(ModelConfig(spatial_dims=3), (128, 128, 256)) == 2**29
    baseline = ModelConfig(architecture="baseline", baseline_widths=(8, 16))
    assert allocator.activation_bytes(baseline, (10, 10)) == 10 * 10 * 8 * 4

    small, large = tmp_path / "small", tmp_path / "large"
    for run_dir, grid in ((small, (256, 256)), (large, (256, 256, 256))):
        run_dir.mkdir()
        config = RunConfig()
        config.model.spatial_dims = config.preprocess.spatial_dims = len(grid)
        config.preprocess.grid = grid
        save_run_config(config, run_dir / "config.json")
        save_model(torch.nn.Linear(1, 1), config, run_dir / "model_best.safetensors", {})
    assert allocator.inference_block_bytes([small]) == 256 * 256 * 32 * 4
    # A model file is read from its safetensors header, without torch.
    assert allocator.inference_block_bytes([small / "model_best.safetensors"]) == 2**23
    assert allocator.inference_block_bytes([small, large]) == 2**31  # robustness: the largest
    assert allocator.fast_malloc_pays("predict", allocator.inference_block_bytes([small]))
    # The 3D reference grid (512 MB blocks) was measured on tcmalloc; 2 GB blocks were not.
    assert allocator.fast_malloc_pays("predict", 2**29)
    assert not allocator.fast_malloc_pays("predict", allocator.inference_block_bytes([large]))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    assert allocator.inference_block_bytes([tmp_path / "junk.safetensors"]) is None
    assert allocator.inference_block_bytes([tmp_path / "missing"]) is None
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    save_run_config(RunConfig(), untrained / "config.json")  # no grid planned yet
    assert allocator.inference_block_bytes([untrained]) is None


def test_same_numbers_on_every_allocator(tcmalloc):
    glibc = run([sys.executable, "-c", PROBE])
    huge = run([sys.executable, "-c", PROBE], THP_MEM_ALLOC_ENABLE="1")
    fast = run([sys.executable, "-c", PROBE], LD_PRELOAD=tcmalloc)
    lines = [r.stdout.split() for r in (glibc, huge, fast)]
    assert all(r.returncode == 0 for r in (glibc, huge, fast)), (glibc.stderr, fast.stderr)
    assert glibc.stdout.splitlines()[0] == "glibc malloc"
    assert huge.stdout.splitlines()[0] == "glibc malloc with transparent huge pages"
    assert "tcmalloc" in fast.stdout.splitlines()[0]
    assert lines[0][-1] == lines[1][-1] == lines[2][-1]


def test_huge_pages_reach_torch_only_before_it_loads():
    # torch page-aligns (and madvises) blocks of 2 MB and more only in huge-page mode; glibc
    # otherwise returns 64-byte aligned blocks 16 bytes into an mmap'ed page.
    # Three blocks held at once: a heap block is page-aligned by chance once in 64.
    check = ("blocks = [torch.empty(8 << 20, dtype=torch.uint8) for _ in range(3)]\n"
             "print(sum(b.data_ptr() % 4096 != 0 for b in blocks))")
    before = f"from ldseg import allocator\nallocator.use_huge_pages()\nimport torch\n{check}"
    after = f"import torch\nfrom ldseg import allocator\nallocator.use_huge_pages()\n{check}"
    assert run([sys.executable, "-c", before]).stdout.strip() == "0"
    assert run([sys.executable, "-c", after]).stdout.strip() != "0"  # too late: left alone


def test_environment_round_trip():
    env = {"LD_PRELOAD": "libfoo.so", "PATH": "/bin"}
    child = allocator.preload_environment(env, "libtcmalloc_minimal.so.4", pid=42)
    assert child["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libfoo.so"
    allocator.restore_environment(child, pid=7)  # another process: left alone
    assert child["LD_PRELOAD"].startswith("libtcmalloc")
    allocator.restore_environment(child, pid=42)
    assert child["LD_PRELOAD"] == "libfoo.so" and "PATH" in child
    bare = allocator.preload_environment({}, "libtcmalloc_minimal.so.4", pid=1)
    allocator.restore_environment(bare, pid=1)
    assert "LD_PRELOAD" not in bare


def test_only_the_command_executes_itself_again():
    assert allocator.started_as_command("/venv/bin/ldseg")
    assert allocator.started_as_command(str(Path(allocator.__file__).with_name("cli.py")))
    assert not allocator.started_as_command("-c")
    assert not allocator.started_as_command("/home/me/train_all.py")


def test_malloc_in_use_reads_the_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 123  /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 rw-p 00000000 00:00 0\n"
        "7f04-7f05 r-xp 00000000 08:01 456  /usr/lib/libtcmalloc_minimal.so.4.5.10\n")
    assert allocator.malloc_in_use(maps) == "/usr/lib/libtcmalloc_minimal.so.4.5.10"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 123  /usr/lib/libc.so.6\n")
    assert allocator.malloc_in_use(maps) is None
