"""`ldseg report`: one self-contained HTML file of a prediction folder or a run.

Sections: summary (dataset, model, sampler), legend, metrics (sortable, worst cases first),
one section per case (image, prediction, reference, error map, uncertainty; for 3D the three
planes through the structure's centre, each with a slice slider), the reverse diffusion of one
case, training curves and the noise-robustness curve. Pictures are embedded as data: URIs, so
the file opens from disk with no network; `png_dir` also writes them as PNG files.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from pathlib import Path

import numpy as np

from ldseg.data.dataset import Case, load_case
from ldseg.data.imageio import read_image
from ldseg.data.preprocessing import slice_axis_for
from ldseg.errors import LdsegError
from ldseg.files import atomic_write
from ldseg.pictures import CLASS_COLOURS, ERROR_COLOURS
from ldseg.reporting import figures as fig
from ldseg.reporting.page import page
from ldseg.reporting.sources import CaseFiles, Sources, find_sources

REPORT_FILE = "report.html"
AXIS_NAMES = ("z", "y", "x")  # numpy order of ITK images
PANEL_TITLES = {"image": "image", "prediction": "prediction", "reference": "reference",
                "error": "error map", "uncertainty": "uncertainty (entropy)"}
# (summary key, column title, decimals; -1: a fraction shown in percent)
METRIC_COLUMNS = (("Dice", "Dice", 3), ("IoU", "IoU", 3), ("HD95", "HD95 mm", 2),
                  ("ASSD", "ASSD mm", 2), ("NSD", "NSD", 3),
                  ("VolumeDifference", "vol. diff. %", -1))
LAYERS = ("prediction", "reference", "error")  # drawn over the image panel's picture
MIN_SHOWN = 160  # pixels: smaller pictures are enlarged on screen (pixelated)
STEP_SIDE = 150  # pixels, the reverse-diffusion pictures


def _esc(value: object) -> str:
    return html.escape(str(value))


def _uri(data: bytes, fmt: str) -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(float(v) * 255)):02x}" for v in rgb[:3])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class _Pngs:
    """The `--png` folder: every picture of the report once more, as a lossless PNG file."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def save(self, name: str, picture: np.ndarray | bytes) -> None:
        if self.folder is None:
            return
        data = picture if isinstance(picture, bytes) else fig.encode(picture, "png")
        with atomic_write(self.folder / f"{_safe(name)}.png", suffix=".png") as tmp:
            tmp.write_bytes(data)


def _img(uri: str, shape: tuple[int, ...], alt: str, panel: str = "", base: str = "") -> str:
    """An <img>; with `base`, `uri` is a transparent layer shown over that picture."""
    h, w = shape[:2]
    scale = max(1.0, MIN_SHOWN / max(h, w))
    attr = f' data-panel="{panel}"' if panel else ""
    if base:
        attr += f' data-layer="1" style="background-image: url(&quot;{base}&quot;)"'
    return (f'<img class="pic" src="{uri}" alt="{_esc(alt)}" width="{round(w * scale)}" '
            f'height="{round(h * scale)}"{attr}>')


def _panel_uris(layers: dict[str, np.ndarray], quality: int) -> dict[str, str]:
    """Image and uncertainty as JPEG, label layers as (palette) PNG."""
    return {n: _uri(fig.encode(p, "png"), "png") if p.shape[-1] == 4 else
            _uri(fig.encode(p, "jpeg", quality), "jpeg") for n, p in layers.items()}


def _panels(uris: dict[str, str], shape: tuple[int, ...]) -> str:
    def base(name: str) -> str:  # what a layer is drawn over
        if name not in LAYERS:
            return ""
        return uris.get("grey", uris["image"]) if name == "error" else uris["image"]

    return '<div class="panels">' + "".join(
        f"<figure>{_img(uri, shape, PANEL_TITLES[n], n, base(n))}"
        f"<figcaption>{_esc(PANEL_TITLES[n])}</figcaption></figure>"
        for n, uri in uris.items() if n != "grey") + "</div>"


def _kv(title: str, rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows
                    if v not in (None, ""))
    return f'<div class="box"><h3>{_esc(title)}</h3><table class="kv">{cells}</table></div>'


# ---------------------------------------------------------------------------- summary, legend


def _summary(s: Sources) -> str:
    cfg = s.config
    boxes = [_kv("Dataset", [
        ("name", s.dataset_name), ("classes", ", ".join(s.class_names[1:])),
        ("channels", ", ".join(s.channel_names)),
        ("cases", len(s.cases) if s.kind == "prediction" else ""),
        ("folder", s.folder.resolve())])]
    if cfg is not None:
        pre, m = cfg.preprocess, cfg.model
        kind = f"{pre.spatial_dims}D"
        if pre.spatial_dims < pre.data_spatial_dims:
            kind += " on slices of 3D images"
        arch = getattr(m, "architecture", "ldseg")
        latent = "" if arch == "baseline" else (
            f"{m.latent_channels} channel(s) at 1/{m.downsample_factor} of the grid")
        boxes.append(_kv("Model", [
            ("file", s.model_file), ("architecture", arch), ("dimensions", kind),
            ("model grid", " x ".join(map(str, pre.grid))), ("latent", latent),
            ("weights", f"{s.weights / 1e6:.2f} M values"),
            ("noise schedule", cfg.diffusion.schedule if arch != "baseline" else "")]))
        if s.history:
            last = s.history[-1]
            best = [r.get("val_dice") for r in s.history if r.get("val_dice") is not None]
            boxes.append(_kv("Training", [
                ("epochs", int(last["epoch"]) + 1), ("steps", int(last.get("step") or 0)),
                ("time", f"{(last.get('time_s') or 0) / 60:.1f} min"),
                ("last loss", f"{last['loss']:.4f}" if last.get("loss") is not None else ""),
                ("best validation Dice", f"{max(best):.4f}" if best else "")]))
        info = s.info
        steps = info.get("steps", cfg.diffusion.sampling_steps)
        eta = info.get("eta", cfg.diffusion.eta)
        sampler = "DDIM" if eta == 0 else "DDPM" if eta == 1 else f"eta {eta}"
        boxes.append(_kv("Sampler" + ("" if info else " (the run's defaults)"), [
            ("steps", steps), ("eta", f"{eta:g} ({sampler})"), ("samples", info.get("samples")),
            ("seed", info.get("seed")), ("checkpoint", info.get("checkpoint")),
            ("images", info.get("input"))]))
    return f'<h2 id="summary">Summary</h2><div class="boxes">{"".join(boxes)}</div>'


def _gradient(cmap: str, vmin: float = 0.0) -> str:
    stops = ", ".join(_hex(fig.heat(np.array([v]), 1.0, cmap, vmin)[0] / 255.0)
                      for v in np.linspace(vmin, 1, 9))
    return f'<span class="bar" style="background: linear-gradient(to right, {stops})"></span>'


def _legend(s: Sources) -> str:
    items = [f'<span><span class="swatch" style="background:{_hex(CLASS_COLOURS[i % 8])}">'
             f"</span>{_esc(name)}</span>" for i, name in enumerate(s.class_names) if i > 0]
    items += [f'<span><span class="swatch" style="background:{_hex(c)}"></span>{_esc(n)}'
              "</span>" for n, c in ERROR_COLOURS.items()]
    top = math.log(max(len(s.class_names), 2))
    items.append(f"<span>uncertainty 0{_gradient('magma')}{top:.2f} nats (= ln "
                 f"{max(len(s.class_names), 2)}, all classes equally likely)</span>")
    items.append(f"<span>latent -3{_gradient('PuOr', -1.0)}+3</span>")
    return f'<div class="legend" id="legend">{"".join(items)}</div>'


# ---------------------------------------------------------------------------- metrics


def _cell(value: object, digits: int) -> str:
    """A table cell sorting by its value; digits -1: a fraction shown as a percentage."""
    if not isinstance(value, int | float) or math.isnan(value):
        return '<td data-v="NaN">n/a</td>'
    shown = f"{100 * value:+.1f}" if digits < 0 else f"{value:.{digits}f}"
    return f'<td data-v="{float(value)!r}">{shown}</td>'


def _metrics(s: Sources, anchors: dict[str, str]) -> str:
    if s.summary is None:
        return ('<h2 id="metrics">Metrics</h2><p class="note">No summary.json and no reference '
                "given (-r REFERENCES): no metrics.</p>")
    names = dict(s.summary.get("class_names") or {})
    names.update({str(i): n for i, n in enumerate(s.class_names) if i > 0})
    labels = sorted(s.summary["mean"], key=int)
    columns = [c for c in METRIC_COLUMNS if any(c[0] in s.summary["mean"][k] for k in labels)]
    head = "".join(f"<th>{_esc(title)}</th>" for _, title, _ in columns)
    mean_rows = "".join(
        f"<tr><td>{_esc(names.get(k, k))}</td>"
        + "".join(_cell(s.summary["mean"][k].get(key), d) for key, _, d in columns) + "</tr>"
        for k in labels)
    rows = []
    for case in s.cases:
        link = (f'<a href="#{anchors[case.name]}">{_esc(case.name)}</a>'
                if case.name in anchors else _esc(case.name))
        for k, values in sorted((case.metrics or {}).items(), key=lambda kv: int(kv[0])):
            dice = values.get("Dice")
            dice = float(dice) if isinstance(dice, int | float) else math.nan
            rows.append((dice, f"<tr><td>{link}</td><td class=text>"
                         f"{_esc(names.get(k, k))}</td>"
                         + "".join(_cell(values.get(key), d) for key, _, d in columns) + "</tr>"))
    rows.sort(key=lambda r: (math.isnan(r[0]), r[0]))  # worst first, NaN last
    return (
        '<h2 id="metrics">Metrics</h2><p class="note">Mean over cases per class (NaN cases '
        "left out), then every case and class, worst Dice first; click a column to sort. "
        "Distances in mm; volume difference relative to the reference.</p>"
        f'<table class="sortable" id="mean-table"><thead><tr><th>class</th>{head}</tr></thead>'
        f"<tbody>{mean_rows}</tbody></table><p></p>"
        f'<table class="sortable" id="case-table"><thead><tr><th>case</th><th>class</th>'
        + head.replace("<th>Dice</th>", '<th aria-sort="ascending">Dice</th>', 1) +
        f'</tr></thead><tbody>{"".join(r for _, r in rows)}</tbody></table>')


# ---------------------------------------------------------------------------- cases


def _read_case(s: Sources, case: CaseFiles) -> tuple[fig.CaseVolumes, np.ndarray, object]:
    if case.image is None:
        raise LdsegError(f"{case.prediction}: cannot find the image of case '{case.name}' "
                         "(give -i IMAGES or -d dataset.json)")
    image, _, geometry = load_case(case.image)
    arrays = {}
    for what, path in (("prediction", case.prediction), ("reference", case.reference),
                       ("uncertainty", case.uncertainty)):
        if path is None:
            arrays[what] = None
            continue
        array = read_image(path)[0][0]
        if array.shape != image.shape[1:]:
            raise LdsegError(f"{path}: {what} shape {array.shape} differs from the image "
                             f"shape {image.shape[1:]} ({case.image.image_files[0]})")
        arrays[what] = array
    volumes = fig.CaseVolumes(
        fig.window(image, s.channel_names), arrays["prediction"].astype(np.int64),
        None if arrays["reference"] is None else arrays["reference"].astype(np.int64),
        arrays["uncertainty"], geometry.spacing, math.log(max(len(s.class_names), 2)))
    return volumes, image, geometry


def _scores(s: Sources, case: CaseFiles) -> str:
    parts = [f"{s.class_names[int(k)] if int(k) < len(s.class_names) else k} Dice "
             f"{v['Dice']:.3f}" for k, v in sorted((case.metrics or {}).items(),
                                                   key=lambda kv: int(kv[0]))
             if isinstance(v.get("Dice"), int | float) and not math.isnan(v["Dice"])]
    return " &middot; ".join(_esc(p) for p in parts)


def _case(s: Sources, case: CaseFiles, anchor: str, max_slices: int, pngs: _Pngs) -> str:
    volumes, _, _ = _read_case(s, case)
    out = [f'<section class="case" id="{anchor}"><h3>{_esc(case.name)} '
           f'<span class="scores">{_scores(s, case)}</span></h3>']
    if volumes.prediction.ndim == 2:
        layers = fig.case_layers(volumes, max_side=420)  # three panels side by side
        out.append(_panels(_panel_uris(layers, 90), layers["image"].shape))
        for name, picture in fig.case_panels(volumes, max_side=4096).items():
            pngs.save(f"{case.name}_{name}", picture)
        return "".join(out) + "</section>"
    mask = volumes.foreground
    centre = fig.centre_of(mask)
    for axis in range(3):
        positions = fig.slice_positions(mask, axis, centre[axis], max_slices)
        start = positions.index(centre[axis])
        slides = [_panel_uris(fig.case_layers(volumes, axis, k), 80) for k in positions]
        shape = fig.case_layers(volumes, axis, centre[axis])["image"].shape
        data = {"slices": positions, "size": int(mask.shape[axis]),
                "panels": {n: [slide[n] for slide in slides] for n in slides[0]}}
        block = f"{anchor}-axis{axis}"
        out.append(
            f'<div class="plane">{_panels(slides[start], shape)}<label>across '
            f"{AXIS_NAMES[axis]} (array axis {axis}) <input type=\"range\" class=\"slice\" "
            f'min="0" max="{len(positions) - 1}" value="{start}" data-src="{block}" '
            f'aria-label="{_esc(case.name)} slice across {AXIS_NAMES[axis]}">'
            f'<span class="slice-label">slice {positions[start] + 1} of {mask.shape[axis]}'
            f'</span></label><script type="application/json" id="{block}">'
            f'{json.dumps(data).replace("</", "<" + chr(92) + "/")}</script></div>')
        for name, picture in fig.case_panels(volumes, axis, centre[axis], 4096).items():
            pngs.save(f"{case.name}_{AXIS_NAMES[axis]}{centre[axis]}_{name}", picture)
    return "".join(out) + "</section>"


# ---------------------------------------------------------------------------- reverse diffusion


def _diffusion(s: Sources, image_case: Case, pngs: _Pngs, prediction: Path | None) -> str:
    from ldseg.inference.predictor import Segmenter
    from ldseg.inference.trajectory import reverse_diffusion

    cfg = s.config
    image, _, geometry = load_case(image_case)
    index, axis = None, slice_axis_for(geometry.spacing, cfg.preprocess.slice_axis)
    if cfg.preprocess.spatial_dims < cfg.preprocess.data_spatial_dims and prediction:
        index = fig.centre_of(read_image(prediction)[0][0] > 0)[axis]
    traj = reverse_diffusion(Segmenter.load(s.model_file), image, geometry,
                             steps=s.info.get("steps"), eta=s.info.get("eta"),
                             seed=int(s.info.get("seed", 0)), slice_index=index)
    display = fig.window(traj.image.mean(0, keepdims=True))  # grey: the classes stand out
    latents, labels, estimates = traj.latents, traj.labels, traj.denoised_labels
    where = ""
    if labels.ndim == 4:  # a 3D grid: the plane across z through the final structure's centre
        z = fig.centre_of(labels[-1] > 0)[0]
        lz = min(latents.shape[2] - 1, z * latents.shape[2] // labels.shape[1])
        display, labels, estimates = display[z], labels[:, z], estimates[:, z]
        latents = latents[:, :, lz]
        where = f", plane {z + 1} of {traj.labels.shape[1]} across z of the model grid"
    size = fig.display_size(labels.shape[1:], (1.0, 1.0), STEP_SIDE)
    scale = STEP_SIDE / max(size)
    size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    rows: list[list[np.ndarray]] = [[], [], []]
    cards = []
    for k, tau in enumerate(traj.timesteps):
        pics = [fig.latent_picture(latents[k], size), fig.resize(fig.overlay(display, labels[k]),
                size), fig.resize(fig.overlay(display, estimates[k]), size)]
        for row, pic in zip(rows, pics, strict=True):
            row.append(pic)
        cards.append(f'<div class="step">step {k + 1} &middot; t = {tau}'
                     + "".join(_img(_uri(fig.encode(p, "png"), "png"), p.shape, alt)
                               for p, alt in zip(pics, ("latent", "decoded latent",
                                                        "decoded estimate"), strict=True))
                     + "</div>")
    pngs.save(f"diffusion_{image_case.name}", fig.strip(rows))
    slice_note = "" if traj.slice_index is None else (
        f", slice {traj.slice_index + 1} across array axis {axis}")
    return (
        f'<h2 id="diffusion">Reverse diffusion of {_esc(image_case.name)}</h2><p class="note">'
        f"{len(traj.timesteps)} steps from noise (seed {int(s.info.get('seed', 0))}"
        f"{slice_note}{where}). In each step, top: the latent ({traj.latents.shape[1]} "
        "channel(s), one tile each); middle: the latent decoded as it stands; bottom: the "
        "decoded estimate of the clean latent. The last step is the segmentation of one "
        f'sample.</p><div class="steps">{"".join(cards)}</div>')


def _diffusion_section(s: Sources, shown: list[CaseFiles], pngs: _Pngs) -> str:
    """The reverse diffusion of the first shown case (the worst) or of a run's first image."""
    target = next((c for c in shown if c.image is not None), None)
    image_case = target.image if target else s.extra_image
    if image_case is None:
        return ""
    if s.config is None or getattr(s.config.model, "architecture", "ldseg") != "ldseg":
        why = "no model found (give -m RUN)" if s.config is None else "not a diffusion model"
        return f'<h2 id="diffusion">Reverse diffusion</h2><p class="note">Not shown: {why}.</p>'
    return _diffusion(s, image_case, pngs, target.prediction if target else None)


# ---------------------------------------------------------------------------- the report


def build_report(
    path: str | Path,
    output: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    model: str | Path | None = None,
    dataset_json: str | Path | None = None,
    images: str | Path | None = None,
    summary: str | Path | None = None,
    robustness: str | Path | None = None,
    png_dir: str | Path | None = None,
    max_cases: int = 20,
    max_slices: int = 32,
    diffusion: bool = True,
    checkpoint: str = "best",
) -> Path:
    """Write the report of a prediction folder or a run (default `path/report.html`);
    returns its path. Cases beyond `max_cases` (the best ones) appear in the table only. The
    robustness curve comes from `robustness` (a file or an `ldseg robustness` output folder),
    else from a robustness.csv/.json in `path` or the run folder."""
    if max_cases < 1 or max_slices < 1:
        raise LdsegError("max_cases and max_slices must be at least 1")
    s = find_sources(Path(path), reference=Path(reference) if reference else None,
                     model=Path(model) if model else None,
                     dataset_json=Path(dataset_json) if dataset_json else None,
                     images=Path(images) if images else None,
                     summary=Path(summary) if summary else None,
                     robustness=Path(robustness) if robustness else None, checkpoint=checkpoint)
    output = Path(output) if output is not None else s.folder / REPORT_FILE
    pngs = _Pngs(png_dir)
    shown = s.cases[:max_cases]
    anchors = {c.name: f"case-{i}" for i, c in enumerate(shown)}
    body = [_summary(s), _legend(s)]
    if s.kind == "prediction":
        body.append(_metrics(s, anchors))
        more = len(s.cases) - len(shown)
        note = f" ({more} more in the table only)" if more > 0 else ""
        body.append(f'<h2 id="cases">Cases, worst first{note}</h2>')
        body += [_case(s, c, anchors[c.name], max_slices, pngs) for c in shown]
    if diffusion:
        body.append(_diffusion_section(s, shown, pngs))
    if s.history:
        curves = fig.training_curves_png(s.history)
        pngs.save("training_curves", curves)
        body.append('<h2 id="training">Training</h2>'
                    f'<img src="{_uri(curves, "png")}" alt="training curves">')
    if s.robustness:
        curve = fig.robustness_png(s.robustness)
        pngs.save("robustness", curve)
        body.append(f'<h2 id="robustness">Noise robustness</h2><p class="note">From '
                    f'{_esc(s.robustness_file)}.</p><img src="{_uri(curve, "png")}" '
                    'alt="noise robustness">')
    title = f"ldseg report: {s.dataset_name or s.folder.resolve().name}"
    made = time.strftime("%Y-%m-%d %H:%M")
    text = page(title, f"{s.kind} folder {s.folder.resolve()}, written {made}", "\n".join(body))
    with atomic_write(output, suffix=".html") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return output


__all__ = ["REPORT_FILE", "build_report"]
