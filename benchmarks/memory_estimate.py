"""Calibration of the training-memory estimate (ldseg.training.memory) against real steps.

Each configuration runs in its own process: build the default model, optimizer and EMA as the
trainer does, take a few real training steps on random data of the grid and batch, and report
the peak resident memory above what the process held before the steps (the model, the batch).
The estimate's job is to be a little high, never low.

    python benchmarks/memory_estimate.py            # 2D and 3D up to 64^3, ~3 min on 1 thread
    python benchmarks/memory_estimate.py --large    # adds 512x512 and 96x96x128 (~2 min more)
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys

CONFIGS = [(2, 4, (64, 64)), (2, 4, (128, 128)), (2, 8, (128, 128)), (2, 4, (256, 256)),
           (3, 1, (32, 32, 32)), (3, 2, (48, 48, 64)), (3, 2, (64, 64, 64))]
LARGE = [(2, 1, (512, 512)), (3, 1, (96, 96, 128))]


def measure(dims: int, batch: int, grid: tuple[int, ...], steps: int) -> dict:
    """One configuration, in this process: estimate first (it allocates little), then steps."""
    import torch

    from ldseg.config import PreprocessConfig, RunConfig
    from ldseg.diffusion.schedule import NoiseSchedule
    from ldseg.model.networks import LDSeg
    from ldseg.training.loss import LDSegLoss
    from ldseg.training.memory import training_bytes
    from ldseg.training.plan import default_model

    torch.set_num_threads(1)
    config = RunConfig(model=default_model(dims, 1, 3),
                       preprocess=PreprocessConfig(spatial_dims=dims, grid=grid))
    estimate, _ = training_bytes(config, batch, samples=0)
    model = LDSeg(config.model)
    ema = copy.deepcopy(model)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    model.to(memory_format=fmt)
    ema.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters())
    schedule, loss_fn = NoiseSchedule(), LDSegLoss()
    x = torch.randn(batch, 1, *grid).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (batch, *grid), dtype=torch.uint8)
    base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    for _ in range(steps):
        t = torch.randint(0, 1000, (batch,))
        z0 = model.label_encoder(y)
        eps = torch.randn_like(z0)
        z_t = schedule.add_noise(z0, eps, t)
        eps_hat = model.denoiser(z_t, model.image_encoder(x), t)
        logits = model.label_decoder(schedule.denoised(z_t, eps_hat, t))
        loss, _ = loss_fn(logits, y, eps, eps_hat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = 2 * sum(p.numel() for p in model.parameters()) * 4  # model + EMA, before base
    return {"dims": dims, "batch": batch, "grid": list(grid), "estimate_gb": estimate / 1e9,
            "measured_gb": (peak - base + weights) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the two large grids")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "dims,batch,g1xg2[xg3]"
    args = parser.parse_args()
    if args.one:
        dims, batch, grid = args.one.split(",")
        print(json.dumps(measure(int(dims), int(batch), tuple(int(g) for g in grid.split("x")),
                                 args.steps)))
        return
    print("| grid | batch | estimate (GB) | measured peak (GB) | estimate / measured |")
    print("| --- | --- | --- | --- | --- |")
    for dims, batch, grid in CONFIGS + (LARGE if args.large else []):
        spec = f"{dims},{batch},{'x'.join(map(str, grid))}"
        out = subprocess.run([sys.executable, __file__, "--one", spec, "--steps",
                              str(args.steps)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {'x'.join(map(str, grid))} | {batch} | {r['estimate_gb']:.2f} | "
              f"{r['measured_gb']:.2f} | {r['estimate_gb'] / r['measured_gb']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
