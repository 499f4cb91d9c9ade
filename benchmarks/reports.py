"""Example reports: knee MRI (3D, 3 classes) and GlaS histology (2D), with a screenshot each.

Uses the runs and 4-sample predictions of `core_accuracy.py` (run that first):

    python benchmarks/reports.py [--work work_dirs/core_accuracy] [--out work_dirs/reports]

For each task: `ldseg report PRED -m RUN -d DATASET/dataset.json -r DATASET/labelsTs --png`,
then a full-page screenshot in headless Chromium (Debian's `chromium`, driven by Playwright),
with the report's console errors and undecoded pictures counted. Prints size and time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {  # name: (prediction folder, run, dataset) under --work
    "knee3d": ("pred/knee3d_s4", "runs/knee3d", "data/knee"),
    "glas": ("pred/glas_s4", "runs/glas", "data/glas"),
}


def screenshot(report: Path, png: Path, width: int = 1400) -> dict:
    """Open the report from disk, check it, and save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        bad = page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0)"
                            ".length")
        images = page.evaluate("document.images.length")
        page.screenshot(path=str(png), full_page=True)
        browser.close()
    return {"console_errors": errors, "images": images, "undecoded": bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "work_dirs" / "core_accuracy")
    parser.add_argument("--out", type=Path, default=ROOT / "work_dirs" / "reports")
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    for name in args.tasks.split(","):
        pred, run, data = (args.work / part for part in TASKS[name])
        if not pred.is_dir():
            raise SystemExit(f"{pred}: missing; run benchmarks/core_accuracy.py first")
        report = args.out / f"{name}.html"
        command = [sys.executable, "-m", "ldseg.cli", "report", str(pred), "-o", str(report),
                   "-m", str(run), "-d", str(data / "dataset.json"), "-r",
                   str(data / "labelsTs"), "--png", str(args.out / f"{name}_png")]
        print("$ ldseg", " ".join(command[3:]), flush=True)
        t0 = time.monotonic()
        subprocess.run(command, check=True)
        seconds = time.monotonic() - t0
        check = screenshot(report, args.out / f"{name}.png")
        print(f"{name}: {report} ({report.stat().st_size / 1e6:.2f} MB, {seconds:.1f} s), "
              f"{check['images']} pictures, {check['undecoded']} undecoded, console errors: "
              f"{check['console_errors'] or 'none'}; screenshot {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
