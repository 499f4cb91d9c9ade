"""Which malloc the tensors come from: chosen before torch is loaded, by the `ldseg` command.

Why: PyTorch has no caching allocator on the CPU. glibc serves every block above 32 MB with a
fresh mmap and unmaps it on free, so each large activation is page-faulted and zeroed by the
kernel again, step after step. At 512x512, batch 4 (a 32-channel activation is 134 MB) the
kernel took a third of the CPU time of training. tcmalloc keeps freed blocks for reuse, as
PyTorch's CPU performance guide recommends (AMD EPYC, 2 cores, reference widths with
--grad-checkpoint: 13.2 -> 6.6-7.5 s per step, peak RSS 2.4-2.5 GB on both;
benchmarks/results/speed_log.md). It can only replace
malloc when preloaded at process start (LD_PRELOAD), so `ldseg train` executes itself again
once with it, when it is installed (Debian: libtcmalloc-minimal4). Without it, training gets
PyTorch's own transparent-huge-page option (THP_MEM_ALLOC_ENABLE, read once when torch first
allocates): 512 times fewer faults, 12.4 -> 9.6 s without checkpointing.

Inference (`predict`, `robustness`) runs on tcmalloc too when every model's largest
full-resolution activation is at most INFERENCE_BLOCK_LIMIT: 2D 512x512 0.63 -> 0.43-0.47 s per
image for 0.50 -> 0.53 GB, 256x256 0.17 -> 0.12 s; 3D 128x128x256 (512 MB activations) 15.7 ->
12.5 s at 1.77 -> 1.74 GB, since the stem and the upsampling convs run in slabs at that size
(before, their whole-grid transients fragmented tcmalloc's heap: 2.08 GB; speed_log.md). Larger
activations than measured keep glibc's malloc, which returns every block as soon as it is freed.

`LDSEG_ALLOCATOR`: `auto` (the default: tcmalloc when found, for `train` and `demo`, and for
`predict` and `robustness` under the limit above), `tcmalloc` (for every command), `system`
(glibc's malloc for every command), or the path of a malloc library to preload. Nothing here
imports torch.
"""

from __future__ import annotations

import ctypes.util
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ldseg.config import ModelConfig, RunConfig, from_dict, load_run_config
from ldseg.errors import LdsegError

ENV = "LDSEG_ALLOCATOR"
# Set to the PID that re-executed itself (exec keeps the PID): it never does so twice, and the
# processes it starts (other PIDs) choose for themselves.
_REEXEC_PID = "LDSEG_ALLOCATOR_REEXEC_PID"
_ORIGINAL_PRELOAD = "LDSEG_ALLOCATOR_ORIGINAL_PRELOAD"
_CANDIDATES = ("tcmalloc_minimal", "tcmalloc")
_MALLOC_NAMES = ("tcmalloc", "jemalloc", "mimalloc")


def find_fast_malloc() -> str | None:
    """The soname of an installed tcmalloc (the dynamic loader finds it by name), or None."""
    if not sys.platform.startswith("linux"):
        return None
    for name in _CANDIDATES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def malloc_in_use(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The path of a non-glibc malloc mapped into this process, or None (glibc's)."""
    try:
        text = maps.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset device inode [path]
        if len(fields) == 6 and any(n in Path(fields[5]).name for n in _MALLOC_NAMES):
            return fields[5]
    return None


def describe() -> str:
    """One line for logs and `ldseg info`: which malloc serves the tensors here."""
    path = malloc_in_use()
    if path:
        return f"{Path(path).name} ({path})"
    huge = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    return "glibc malloc" + (" with transparent huge pages" if huge else "")


TRAINING_COMMANDS = ("train", "demo")
INFERENCE_COMMANDS = ("predict", "robustness")
# glibc maps every block above 32 MB afresh; tcmalloc reuses them. Measured up to the 3D
# reference grid's 512 MB blocks (peak within 0.2 GB of glibc's); unmeasured beyond.
INFERENCE_BLOCK_LIMIT = 2**30


def activation_bytes(model: ModelConfig, grid: Sequence[int]) -> int:
    """The largest full-resolution activation of one image, in fp32 bytes: the stem, the image
    encoder's first block and the label decoder's last run on the whole grid (the sampler
    batches images only up to 512x512 voxels, so smaller grids give no larger blocks)."""
    if model.architecture == "baseline":
        channels = model.baseline_widths[0]
    else:
        channels = max(model.image_encoder_stem, model.image_encoder_widths[0],
                       model.label_decoder_widths[-1])
    return math.prod(grid) * channels * 4


def read_run_config(run: Path) -> RunConfig | None:
    """A run folder's config.json, or the config in a model file's safetensors metadata (the
    header only, through numpy: torch is not loaded yet). None where neither can be read: the
    command itself then reports what is wrong."""
    from safetensors import SafetensorError, safe_open

    try:
        if run.is_dir():
            return load_run_config(run / "config.json")
        with safe_open(str(run), framework="numpy") as f:
            data = json.loads((f.metadata() or {})["ldseg_config"])
        config = from_dict(RunConfig, data, where=str(run))
        config.validate()
        return config
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, LdsegError):
        return None


def inference_block_bytes(runs: Sequence[Path]) -> int | None:
    """The largest activation of any of `runs` (see `activation_bytes`), None if one is
    unreadable or has no grid."""
    sizes = []
    for run in runs:
        config = read_run_config(Path(run))
        if config is None or not config.preprocess.grid:
            return None
        sizes.append(activation_bytes(config.model, config.preprocess.grid))
    return max(sizes, default=None)


def choose(command: str, choice: str, block_bytes: int | None = None) -> str | None:
    """The malloc library to preload for `command` under LDSEG_ALLOCATOR=`choice`, or None.

    block_bytes: for an inference command, the largest activation of its models."""
    if choice == "system" or (choice == "auto" and not fast_malloc_pays(command, block_bytes)):
        return None
    if choice in ("auto", "tcmalloc"):
        library = find_fast_malloc()
        if library is None and choice == "tcmalloc":
            raise LdsegError(f"{ENV}=tcmalloc: no tcmalloc library found (Debian: apt-get "
                             "install libtcmalloc-minimal4)")
        return library
    if not Path(choice).is_file():
        raise LdsegError(f"{ENV}={choice}: no such library file (use auto, tcmalloc, system "
                         "or the path of a malloc library such as libtcmalloc_minimal.so.4)")
    return str(Path(choice).resolve())


def fast_malloc_pays(command: str, block_bytes: int | None = None) -> bool:
    """Whether `auto` gives `command` tcmalloc: training always, inference up to the limit."""
    if command in TRAINING_COMMANDS:
        return True
    return (command in INFERENCE_COMMANDS and block_bytes is not None
            and block_bytes <= INFERENCE_BLOCK_LIMIT)


def use_huge_pages() -> None:
    """Ask torch for huge pages on blocks of 2 MB and more (training on glibc's malloc).

    Effective only before torch is imported: torch reads the variable once.
    """
    if malloc_in_use() is None and "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def preload_environment(env: dict[str, str], library: str, pid: int) -> dict[str, str]:
    """The environment to execute this process again with `library` as its malloc."""
    out = dict(env)
    original = env.get("LD_PRELOAD", "")
    out[_ORIGINAL_PRELOAD] = original
    out["LD_PRELOAD"] = " ".join(p for p in (library, original) if p)
    out[_REEXEC_PID] = str(pid)
    # tcmalloc reports every block over 1 GB on stderr; a 3D activation can be one.
    out.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return out


def restore_environment(env: dict[str, str], pid: int) -> None:
    """After the re-execution: the processes this one starts get the user's LD_PRELOAD back."""
    if env.get(_REEXEC_PID) != str(pid):
        return
    original = env.pop(_ORIGINAL_PRELOAD, "")
    if original:
        env["LD_PRELOAD"] = original
    else:
        env.pop("LD_PRELOAD", None)


def started_as_command(argv0: str) -> bool:
    """`ldseg ...` or `python -m ldseg.cli ...`: executing it again repeats nothing else (a
    script that calls ldseg.cli.main() could have done other work first)."""
    path = Path(argv0)
    return path.name == "ldseg" or (path.name == "cli.py" and path.parent.name == "ldseg")


def reexec_with_fast_malloc(command: str, runs: Sequence[Path] = ()) -> None:
    """Called first by the `ldseg` command: execute it again with tcmalloc preloaded, once.

    runs: the models an inference command will load (their grids decide, see `choose`).

    Returns (without re-executing) where `choose` gives no library, when some malloc library
    is already preloaded, or after the re-execution; training then gets torch's huge pages
    where glibc's malloc stays. Same PID, arguments and interpreter options (sys.orig_argv),
    so torchrun and signals see no difference.
    """
    already = os.environ.get(_REEXEC_PID) == str(os.getpid())
    restore_environment(os.environ, os.getpid())
    choice = os.environ.get(ENV, "auto").strip() or "auto"
    library = None
    if not already and started_as_command(sys.argv[0]) and malloc_in_use() is None:
        blocks = inference_block_bytes(runs) if command in INFERENCE_COMMANDS else None
        library = choose(command, choice, blocks)
    if library is None:
        if command in TRAINING_COMMANDS and choice != "system":
            use_huge_pages()
        return
    env = preload_environment(dict(os.environ), library, os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # cannot execute again (unusual sandboxes): carry on as we are
        use_huge_pages()
