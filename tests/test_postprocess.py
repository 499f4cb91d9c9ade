"""Largest-component post-processing: islands go to background, pieces of comparable size
stay, nothing else changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from test_inference import make_run

from ldseg.data.imageio import read_image
from ldseg.errors import LdsegError
from ldseg.inference.postprocess import keep_largest_component, parse_classes
from ldseg.inference.predictor import Segmenter, predict_folder


def test_islands_of_the_chosen_classes_become_background():
    labels = np.zeros((6, 7), np.uint8)
    labels[0:2, 0:2] = 1      # class 1: the largest piece (4 pixels)
    labels[3, 3] = 1          # class 1: an island
    labels[4, 4] = 1          # touches (3, 3) only at a corner: a separate island
    labels[2:4, 5:7] = 2      # class 2: the largest piece
    labels[5, 0] = 2          # class 2: an island
    out = keep_largest_component(labels, (1, 2), keep_fraction=1)
    expected = labels.copy()
    expected[3, 3] = expected[4, 4] = expected[5, 0] = 0
    np.testing.assert_array_equal(out, expected)
    only_one = keep_largest_component(labels, (1,), keep_fraction=1)
    assert only_one[5, 0] == 2 and only_one[3, 3] == 0  # class 2 left as it was
    assert keep_largest_component(labels, ()) is labels
    np.testing.assert_array_equal(labels[3, 3], 1)  # the input is not modified


def test_volumes_use_face_connectivity():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1:4] = 1    # a rod of 3
    labels[3, 3, 3] = 1      # diagonal to nothing: an island
    labels[2, 1, 1] = 1      # a face neighbour of the rod: kept
    out = keep_largest_component(labels, (1,), keep_fraction=1)
    assert out.sum() == 4 and out[3, 3, 3] == 0


def test_pieces_of_comparable_size_stay():
    """A structure split in two (a slice missed) keeps both halves; small islands go."""
    labels = np.zeros((12, 10), np.uint8)
    labels[0:4, 0:10] = 1     # 40 pixels: the largest piece
    labels[6:9, 0:5] = 1      # 15 pixels (0.375 of the largest): the other half
    labels[11, 0:7] = 1       # 7 pixels (0.175): an island
    labels[11, 9] = 2         # another class, untouched
    out = keep_largest_component(labels, (1,))  # default fraction 0.2
    assert (out == 1).sum() == 55 and not out[11, 0:7].any() and out[11, 9] == 2
    assert (keep_largest_component(labels, (1,), keep_fraction=0.1) == 1).sum() == 62
    assert (keep_largest_component(labels, (1,), keep_fraction=0.5) == 1).sum() == 40
    assert (keep_largest_component(labels, (1,), keep_fraction=0.375) == 1).sum() == 55
    for bad in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(LdsegError, match="--keep-fraction"):
            keep_largest_component(labels, (1,), keep_fraction=bad)


def test_class_selection_by_name_index_or_all():
    names = ("background", "femur", "tibia")
    assert parse_classes("all", names) == (1, 2)
    assert parse_classes("", names) == ()
    assert parse_classes("tibia", names) == (2,)
    assert parse_classes("2, femur", names) == (1, 2)
    for bad in ("fibula", "0", "3"):
        with pytest.raises(LdsegError, match="--keep-largest"):
            parse_classes(bad, names)


def test_predict_keeps_one_piece_per_class_and_records_it(tmp_path):
    from conftest import save_png

    run = make_run(tmp_path, 2, 2, (32, 32))
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    save_png(inp / "a_0000.png", (rng.random((40, 36)) * 255).astype(np.uint8))
    raw = Segmenter.load(run).segment_file(inp / "a_0000.png", steps=3)
    pieces = [ndimage.label(raw.labels == k)[1] for k in (1, 2)]
    assert max(pieces) > 1  # the random model leaves islands to remove
    predict_folder(run, inp, tmp_path / "out", steps=3, progress_bar=False, keep_largest="all",
                   keep_fraction=1)
    labels = read_image(tmp_path / "out" / "a.png")[0][0]
    for k in (1, 2):
        assert ndimage.label(labels == k)[1] <= 1
    np.testing.assert_array_equal(labels, keep_largest_component(raw.labels, (1, 2), 1))
    info = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert info["keep_largest"] == ["c1", "c2"] and info["keep_fraction"] == 1
    predict_folder(run, inp, tmp_path / "out2", steps=3, progress_bar=False,
                   keep_largest="c1", keep_fraction=0.3)
    labels = read_image(tmp_path / "out2" / "a.png")[0][0]
    np.testing.assert_array_equal(labels, keep_largest_component(raw.labels, (1,), 0.3))
    assert json.loads((tmp_path / "out2" / "prediction.json").read_text())["keep_fraction"] == 0.3
    assert json.loads((tmp_path / "out" / "prediction.json").read_text())["keep_fraction"] == 1
    with pytest.raises(LdsegError, match="'c7' is not a class"):
        predict_folder(run, inp, tmp_path / "bad", steps=3, progress_bar=False,
                       keep_largest="c7")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_predict_cli_passes_the_fraction_and_refuses_a_bad_one(tmp_path, capsys):
    from conftest import save_png

    from ldseg.cli import main

    run = make_run(tmp_path, 2, 2, (32, 32))
    inp = tmp_path / "in"
    inp.mkdir()
    save_png(inp / "a_0000.png",
             (np.random.default_rng(1).random((40, 36)) * 255).astype(np.uint8))
    raw = Segmenter.load(run).segment_file(inp / "a_0000.png", steps=3)
    assert main(["predict", "-m", str(run), "-i", str(inp), "-o", str(tmp_path / "out"),
                 "--steps", "3", "--keep-largest", "all", "--keep-fraction", "0.6",
                 "--no-progress", "--no-pictures"]) == 0
    labels = read_image(tmp_path / "out" / "a.png")[0][0]
    np.testing.assert_array_equal(labels, keep_largest_component(raw.labels, (1, 2), 0.6))
    assert json.loads((tmp_path / "out" / "prediction.json").read_text())["keep_fraction"] == 0.6
    assert main(["predict", "-m", str(run), "-i", str(inp), "-o", str(tmp_path / "bad"),
                 "--keep-largest", "all", "--keep-fraction", "0", "--no-progress"]) == 1
    assert "--keep-fraction must be within (0, 1], got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
