"""Speed and memory of LDSeg inference and training on this machine.

Every scenario runs in its own subprocess so that its peak RSS is its own, on the malloc the
`ldseg` command would use (src/ldseg/allocator.py: tcmalloc for training when installed, else
glibc's malloc with torch's huge pages; for inference tcmalloc up to the activation size of
allocator.INFERENCE_BLOCK_LIMIT, which covers every scenario here). A `_glibc` or `_tcmalloc`
suffix runs a scenario on that one instead. Times are the median of `--repeats` runs after
one warm-up; FLOPs come from torch's flop counter and are compared with a convolution and a
matmul ceiling measured in the same run.

    .venv/bin/python benchmarks/speed.py                  # all scenarios -> results/speed.md
    .venv/bin/python benchmarks/speed.py --only infer2d_512 --repeats 5
    .venv/bin/python benchmarks/speed.py --rounds 3        # every scenario 3 times, interleaved
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speed.md"

# Figures of the issue, measured on this machine kind (2-core AVX2 CPU).
REFERENCE = {
    "infer2d_512": (2.66, 3.05),  # TF reference LDSeg: s/image, GB peak RSS
    "infer2d_512_compiled": (2.66, 3.05),
    "infer2d_512_unoptimised": (2.66, 3.05),
    "infer2d_512_bf16": (2.66, 3.05),
    "infer3d_ref_bf16": (59.6, 3.6),
    "train2d_512": (32.0, 11.2),  # s/step, GB
    "train2d_512_checkpointing": (32.0, 11.2),
    "train2d_512_lean": (32.0, 11.2),
    "train2d_512_lean_checkpointing": (32.0, 11.2),
    "infer3d_ref": (59.6, 3.6),  # s/volume, GB
    "infer2d_256": (67.0, None),  # MedSegDiff (pixel space), 15 steps x 4.5 s
}
TARGET = {"infer2d_512": (0.5, 0.6), "infer2d_512_compiled": (0.5, 0.6),
          "infer2d_512_bf16": (0.5, 0.6), "infer3d_ref_bf16": (15.0, 2.0),
          "train2d_512": (8.0, 3.0), "train2d_512_checkpointing": (8.0, 3.0),
          "train2d_512_lean": (8.0, 3.0), "train2d_512_lean_checkpointing": (8.0, 3.0),
          "infer3d_ref": (15.0, 2.0)}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: allocator, oneDNN primitive cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from ldseg.model import networks

    # The FLOPs of the function, without slabs: the counter charges a slab's halo inputs to a
    # transposed conv whose padding crops their outputs (+2.5% on the 3D reference grid).
    slabs = networks.SLAB_ELEMENTS, networks.SLAB_OUTPUT
    networks.SLAB_ELEMENTS = networks.SLAB_OUTPUT = 2**62
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        networks.SLAB_ELEMENTS, networks.SLAB_OUTPUT = slabs
    return counter.get_total_flops()


# ---- scenarios (each runs in a fresh process) ------------------------------------------------
def ceiling(repeats: int) -> dict:
    """What the hardware gives PyTorch: a large matmul and a channels-last 3x3 convolution."""
    from ldseg.inference.runtime import cpu_has_bf16

    a = torch.randn(2048, 2048)
    mm = statistics.median(timed(lambda: a @ a, repeats + 6))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    # One image, as the full-resolution networks run: its 16 MB output comes from glibc's heap.
    # A batch of 4 (a 64 MB output, mapped afresh by glibc every call) measured the kernel's
    # page faults too: 174 against 222 GFLOP/s on tcmalloc, below the network's own convs.
    x = torch.randn(1, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        tc = statistics.median(timed(lambda: conv(x), repeats + 6))
    conv_flops = 2 * 256 * 256 * 9 * 64 * 64
    out = {"matmul_gflops": 2 * 2048**3 / mm / 1e9, "conv_gflops": conv_flops / tc / 1e9}
    if cpu_has_bf16():  # the ceiling of the --bf16 scenarios
        conv, x = conv.to(torch.bfloat16), x.to(torch.bfloat16)
        with torch.inference_mode():
            tc = statistics.median(timed(lambda: conv(x), repeats + 6))
        out["conv_bf16_gflops"] = conv_flops / tc / 1e9
    return out


def _inference(spatial_dims: int, grid: tuple[int, ...], in_channels: int, num_classes: int,
               batch: int, samples: int, repeats: int, model_cfg=None, compile: bool = False,
               optimised: bool = True, bf16: bool = False) -> dict:
    from ldseg.config import ModelConfig
    from ldseg.diffusion.schedule import NoiseSchedule
    from ldseg.inference.runtime import autocast, prepare_for_inference
    from ldseg.inference.sampling import segment_batch
    from ldseg.model.networks import LDSeg

    cfg = model_cfg or ModelConfig(spatial_dims=spatial_dims, in_channels=in_channels,
                                   num_classes=num_classes)
    model = LDSeg(cfg).eval()
    # Unoptimised: contiguous layout everywhere, the whole batch through the full-resolution
    # networks at once (what the code did before those two changes).
    memory_format = (prepare_for_inference(model, compile=compile) if optimised
                     else torch.contiguous_format)
    full_res_voxels = 512 * 512 if optimised else 2**40
    schedule = NoiseSchedule("cosine", 1000)
    images = torch.randn(batch, in_channels, *grid)

    def run():
        with torch.inference_mode(), autocast(torch.device("cpu"), bf16):
            segment_batch(model, schedule, images, steps=15, samples=samples,
                          generator=torch.Generator().manual_seed(0), memory_format=memory_format,
                          full_res_voxels=full_res_voxels)

    times = timed(run, repeats)
    rss = peak_rss_gb()  # before the flop counter, whose dispatch mode holds extra tensors
    flops = count_flops(run) if not compile else None
    sec = statistics.median(times) / batch
    out = {"seconds_per_image": sec, "times": times, "peak_rss_gb": rss}
    if flops:
        out["gflop_per_image"] = flops / batch / 1e9
        out["achieved_gflops"] = flops / batch / sec / 1e9
    return out


GRIDS = {"infer2d_512": (512, 512), "infer2d_256": (256, 256), "infer3d_ref": (128, 128, 256),
         "infer3d_default": (48, 48, 64), "profile2d_512": (512, 512)}


def infer2d_512(repeats: int, compile: bool = False) -> dict:
    return _inference(2, GRIDS["infer2d_512"], 3, 2, 4, 1, repeats, compile=compile)


def infer2d_512_bf16(repeats: int) -> dict:
    """`--bf16`: an option (labels may differ from fp32 near ties), fast on CPUs with bf16."""
    return _inference(2, GRIDS["infer2d_512"], 3, 2, 4, 1, repeats, bf16=True)


def infer2d_512_unoptimised(repeats: int) -> dict:
    return _inference(2, GRIDS["infer2d_512"], 3, 2, 4, 1, repeats, optimised=False)


def infer2d_512_compiled(repeats: int) -> dict:
    return infer2d_512(repeats, compile=True)


def infer2d_256(repeats: int) -> dict:
    return _inference(2, GRIDS["infer2d_256"], 1, 2, 4, 1, repeats)


def infer2d_256_s8(repeats: int) -> dict:
    return _inference(2, GRIDS["infer2d_256"], 1, 2, 4, 8, repeats)


def infer3d_ref(repeats: int) -> dict:
    """The 3D model at the reference (2D) widths, on the reference's 128x128x256 grid."""
    return _inference(3, GRIDS["infer3d_ref"], 1, 2, 1, 1, repeats)


def infer3d_ref_bf16(repeats: int) -> dict:
    return _inference(3, GRIDS["infer3d_ref"], 1, 2, 1, 1, repeats, bf16=True)


def infer3d_default(repeats: int) -> dict:
    model, grid = inference_model("infer3d_default")
    return _inference(3, grid, 1, 3, 1, 1, repeats, model_cfg=model)


def train2d_512(repeats: int, checkpointing: bool = False, size: str = "reference") -> dict:
    """One real Trainer step (augmentation, forward, backward, Adam, EMA) at 512x512 RGB, at
    the reference widths (what the reference's figures are for) unless `size` says lean."""
    import numpy as np
    from PIL import Image

    from ldseg.data.dataset import list_cases, load_dataset_spec, write_dataset_json
    from ldseg.training.plan import default_model, plan_run
    from ldseg.training.trainer import Trainer

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rgb512"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        yy, xx = np.mgrid[:512, :512]
        for i in range(4):
            cy, cx, r = rng.uniform(150, 360, 2).tolist() + [rng.uniform(60, 120)]
            label = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8)
            rgb = np.clip(rng.normal(120, 30, (512, 512, 3)) + 60 * label[..., None], 0, 255)
            Image.fromarray(rgb.astype(np.uint8)).save(root / "imagesTr" / f"c{i}_0000.png")
            Image.fromarray(label).save(root / "labelsTr" / f"c{i}.png")
        write_dataset_json(root, ["R", "G", "B"], ["background", "object"], 4, ".png",
                           "rgb512")
        spec = load_dataset_spec(root)
        config = plan_run(spec, [(512, 512)] * 4, [(1.0, 1.0)] * 4, grid=(512, 512),
                          model=default_model(2, 3, 2, size=size))
        config.train.batch_size, config.train.val_fraction = 4, 0.0
        config.train.gradient_checkpointing = checkpointing
        trainer = Trainer(config, Path(tmp) / "run", list_cases(spec), [], progress_bar=False)
        times = timed(lambda: trainer.train_step(0.5), repeats)
    return {"seconds_per_step": statistics.median(times), "times": times,
            "peak_rss_gb": peak_rss_gb()}


def profile2d_512(repeats: int) -> dict:  # noqa: ARG001 (one profiled run is enough)
    """Where the time of a 512x512 inference goes, by operator (torch profiler, self time)."""
    from torch.profiler import ProfilerActivity, profile

    from ldseg.config import ModelConfig
    from ldseg.diffusion.schedule import NoiseSchedule
    from ldseg.inference.runtime import prepare_for_inference
    from ldseg.inference.sampling import segment_batch
    from ldseg.model.networks import LDSeg

    model = LDSeg(ModelConfig(spatial_dims=2, in_channels=3, num_classes=2)).eval()
    memory_format = prepare_for_inference(model)
    schedule, images = NoiseSchedule("cosine", 1000), torch.randn(4, 3, *GRIDS["profile2d_512"])

    def run():
        with torch.inference_mode():
            segment_batch(model, schedule, images, steps=15, memory_format=memory_format)

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    # The convolutions alone: their FLOPs over their own time, against the conv ceiling.
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    conv_flops = sum(v for k, v in by_op.items() if "convolution" in k)
    conv_us = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return {"top_ops": [(e.key, round(100 * e.self_cpu_time_total / total, 1), e.count)
                        for e in events[:10]],
            "conv_share_of_flops": conv_flops / max(1, sum(by_op.values())),
            "conv_gflops": conv_flops / max(1e-9, conv_us * 1e-6) / 1e9,
            "peak_rss_gb": peak_rss_gb()}


def train2d_512_checkpointing(repeats: int) -> dict:
    """The same step with `--grad-checkpoint`."""
    return train2d_512(repeats, checkpointing=True)


def train2d_512_lean(repeats: int) -> dict:
    """The step at ldseg's default (lean) widths."""
    return train2d_512(repeats, size="lean")


def train2d_512_lean_checkpointing(repeats: int) -> dict:
    return train2d_512(repeats, checkpointing=True, size="lean")


SCENARIOS = {f.__name__: f for f in (ceiling, infer2d_512, infer2d_512_unoptimised,
                                       infer2d_512_compiled, infer2d_512_bf16, infer2d_256,
                                       infer2d_256_s8, infer3d_ref, infer3d_ref_bf16,
                                       infer3d_default,
                                       train2d_512, train2d_512_checkpointing,
                                       train2d_512_lean, train2d_512_lean_checkpointing,
                                       profile2d_512)}


# The targets' scenarios again on glibc's malloc (a machine without tcmalloc, or
# LDSEG_ALLOCATOR=system).
OTHER_MALLOC_ROWS = ("train2d_512_glibc", "train2d_512_checkpointing_glibc",
                     "infer2d_512_glibc", "infer3d_ref_glibc")


# ---- driver ----------------------------------------------------------------------------------
MALLOCS = {"_glibc": "system", "_tcmalloc": "tcmalloc"}  # scenario suffix: LDSEG_ALLOCATOR


def split_name(name: str) -> tuple[str, str]:
    """'train2d_512_glibc' -> ('train2d_512', 'system'); no suffix: 'auto'."""
    for suffix, choice in MALLOCS.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), choice
    return name, "auto"


def inference_model(base: str):
    """The model config and grid of an inference scenario."""
    from ldseg.config import ModelConfig
    from ldseg.training.plan import default_model

    key = next(k for k in GRIDS if base.startswith(k))
    grid = GRIDS[key]
    model = (default_model(3, 1, 3) if key == "infer3d_default"
             else ModelConfig(spatial_dims=len(grid)))
    return model, grid


def scenario_env(name: str) -> dict[str, str]:
    """The environment `ldseg train` (train* scenarios) or `ldseg predict` (the rest, on its
    model's grid) would run in (allocator.reexec_with_fast_malloc); set here since this script
    imports torch first."""
    from ldseg import allocator

    base, choice = split_name(name)
    command = "train" if base.startswith("train") else "predict"
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", allocator.ENV)}
    block = None
    if command == "predict" and base != "ceiling":
        block = allocator.activation_bytes(*inference_model(base))
    library = allocator.choose(command, choice, block)
    if library:
        return allocator.preload_environment(env, library, pid=0)
    if command in allocator.TRAINING_COMMANDS:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


def run_scenario(name: str, repeats: int, threads: int) -> dict:
    base, _ = split_name(name)
    cmd = [sys.executable, __file__, "--scenario", base, "--repeats", str(repeats),
           "--threads", str(threads)]
    print(f"[speed] {name} ...", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=scenario_env(name))
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def seconds(res: dict) -> float | None:
    return res.get("seconds_per_image", res.get("seconds_per_step"))


def combine_rounds(rounds: list[dict]) -> dict:
    """One scenario over several rounds: the round of median time, with the highest peak RSS
    of any round and every round's time ("round_seconds"); ceilings are each round's median.

    Why: the hosts move by up to 1.7x from minute to minute (speed_log.md), so one process's
    median of repeats says as much about the neighbours as about the code."""
    errors = [r for r in rounds if "error" in r]
    if errors or len(rounds) == 1:
        return errors[0] if errors else rounds[0]
    timed_rounds = [r for r in rounds if seconds(r) is not None]
    if not timed_rounds:  # the ceiling (or the profile): each figure's median over the rounds
        keys = [k for k, v in rounds[0].items() if isinstance(v, float)]
        return {**rounds[0], **{k: statistics.median(r[k] for r in rounds) for k in keys}}
    ordered = sorted(timed_rounds, key=seconds)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rounds)
    chosen["round_seconds"] = [seconds(r) for r in rounds]
    return chosen


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(results: dict, threads: int, repeats: int, rounds: int = 1) -> None:
    from provenance import commit as git_commit

    commit = git_commit()  # with -dirty when the measured code is not exactly the commit
    ceil = results.get("ceiling", {})
    lines = [
        "# Speed and memory (`benchmarks/speed.py`)", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} threads. Commit {commit}. Median of {repeats} runs after a warm-up; "
        "each scenario in its own process (peak RSS is the whole process, Python and torch "
        "included)."
        + (f" Every scenario ran in {rounds} rounds, interleaved: the time is the median round "
           "(the range in brackets), the peak RSS the highest of any round, the ceilings their "
           "medians." if rounds > 1 else ""), "",
        "Malloc (src/ldseg/allocator.py): training rows "
        f"{results.get('train2d_512', {}).get('malloc', '?')}, 2D inference rows "
        f"{results.get('infer2d_512', {}).get('malloc', '?')}, 3D reference-grid rows "
        f"{results.get('infer3d_ref', {}).get('malloc', '?')}, as `ldseg train` and `ldseg "
        "predict` choose them; a `_glibc` or `_tcmalloc` row runs on the other one.", "",
        "Ceilings measured in the same run: matmul 2048^2 fp32 "
        f"**{fmt(ceil.get('matmul_gflops'), 0)} GFLOP/s**, "
        "channels-last 3x3 convolution 64->64, one 256^2 image **"
        f"{fmt(ceil.get('conv_gflops'), 0)} GFLOP/s**"
        + (f", the same convolution in bf16 **{fmt(ceil['conv_bf16_gflops'], 0)} GFLOP/s** "
           "(the ceiling of the `_bf16` rows)" if "conv_bf16_gflops" in ceil else "")
        + ".", "",
        "| scenario | measured | peak RSS GB | target | reference | speed-up | GFLOP/image "
        "| GFLOP/s | % of conv / matmul ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results.items():
        if name in ("ceiling", "profile2d_512"):
            continue
        if "error" in res:
            lines.append(f"| {name} | error: {res['error']} | | | | | | | |")
            continue
        sec = seconds(res)
        unit = "s/step" if "seconds_per_step" in res else "s/image"
        spread = res.get("round_seconds")
        if spread:
            unit += f" ({min(spread):.3f}-{max(spread):.3f})"
        base, _ = split_name(name)
        ref = REFERENCE.get(base, (None, None))
        tgt = TARGET.get(base)
        tgt_s = f"<= {tgt[0]} s, <= {tgt[1]} GB" if tgt else "-"
        ref_s = f"{ref[0]} s" + (f", {ref[1]} GB" if ref[1] else "") if ref[0] else "-"
        speedup = f"{ref[0] / sec:.1f}x" if ref[0] else "-"
        gfs = res.get("achieved_gflops")
        pct = "-"
        conv_ceiling = ceil.get("conv_bf16_gflops" if name.endswith("_bf16") else "conv_gflops")
        if gfs and conv_ceiling:
            pct = (f"{100 * gfs / conv_ceiling:.0f}% / "
                   f"{100 * gfs / ceil['matmul_gflops']:.0f}%")
        lines.append(
            f"| {name} | {sec:.3f} {unit} | {res['peak_rss_gb']:.2f} | {tgt_s} | {ref_s} | "
            f"{speedup} | {fmt(res.get('gflop_per_image'), 1)} | {fmt(gfs, 1)} | {pct} |"
        )
    s1, s8 = results.get("infer2d_256", {}), results.get("infer2d_256_s8", {})
    if "seconds_per_image" in s1 and "seconds_per_image" in s8:
        ratio = s8["seconds_per_image"] / s1["seconds_per_image"]
        lines += ["", f"`--samples 8` costs {ratio:.2f}x the time of 1 sample at 256x256 "
                  "(one image-encoder pass shared by the 8)."]
    prof = results.get("profile2d_512", {})
    if "top_ops" in prof:
        lines += ["", "Where the time of `infer2d_512` goes (torch profiler, self CPU time):", "",
                  "| operator | share | calls |", "| --- | --- | --- |"]
        lines += [f"| `{op}` | {share}% | {count} |" for op, share, count in prof["top_ops"]]
        if "conv_gflops" in prof and ceil.get("conv_gflops"):
            conv_share = sum(share for op, share, _ in prof["top_ops"] if "convolution" in op)
            lines += ["", f"Convolutions are {100 * prof['conv_share_of_flops']:.0f}% of the "
                      f"FLOPs and {conv_share:.0f}% of the time; on their own they run at "
                      f"{prof['conv_gflops']:.0f} GFLOP/s "
                      f"({100 * prof['conv_gflops'] / ceil['conv_gflops']:.0f}% of the ceiling, "
                      "which is a 64->64 channel conv: the network's 3->16, 8- and 16-channel "
                      "convs reach less). The rest of the time goes to attention (the image "
                      "encoder's 4096 tokens in 16-channel heads run at about 100 GFLOP/s), "
                      "GroupNorm and copies, memory-bound work with few FLOPs, and to the "
                      "denoiser: 15 steps of small operations on the 32x32 latent, a quarter of "
                      "the time (about 20 ms a step for the batch of 4, mostly per-operation "
                      "overhead; torch.compile of the denoiser alone: 15 ms, after 48 s of "
                      "compiling). These pull the whole-model figure below the conv rate."]
    lines += ["", "Raw numbers:", "", "```json", json.dumps(results, indent=1), "```", ""]
    log = RESULTS.with_name("speed_log.md")
    if log.is_file():
        lines += [log.read_text()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"[speed] wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*",
                        choices=sorted([*SCENARIOS, *(n + m for n in SCENARIOS for m in MALLOCS)]))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every scenario this many times, interleaved, each in its own "
                             "process: the median round is reported with the range")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scenario:  # child process
        from ldseg import allocator

        print(json.dumps({**SCENARIOS[args.scenario](args.repeats),
                          "malloc": allocator.describe()}))
        return
    names = ["ceiling", *(args.only or [n for n in SCENARIOS if n != "ceiling"])]
    names += [] if args.only else list(OTHER_MALLOC_ROWS)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds = [{n: run_scenario(n, args.repeats, args.threads) for n in names}
              for _ in range(args.rounds)]
    results = {n: combine_rounds([r[n] for r in rounds]) for n in names}
    for name, res in results.items():
        print(name, json.dumps({k: v for k, v in res.items() if k != "times"}))
    if not args.no_write:
        write_report(results, args.threads, args.repeats, args.rounds)


if __name__ == "__main__":
    main()
