"""A 2D+t sequence (echocardiography-like) is segmented as a 3D volume with time as an axis."""

from __future__ import annotations

import numpy as np

from ldseg.config import ModelConfig, TrainConfig
from ldseg.data.dataset import write_dataset_json
from ldseg.data.imageio import Geometry, read_image, write_image
from ldseg.data.synthetic import generate_moving_sequence
from ldseg.inference.predictor import predict_folder
from ldseg.training.trainer import train

TINY_3D = ModelConfig(spatial_dims=3, label_encoder_widths=(8, 16, 16), image_encoder_stem=8,
                      image_encoder_widths=(16, 16), denoiser_widths=(16, 32),
                      denoiser_attention=(False, True), label_decoder_widths=(16, 16),
                      denoiser_res_blocks=1, latent_channels=4, image_latent_channels=4,
                      dropout=0.0)


def test_moving_sequence_trains_and_predicts_as_a_volume(tmp_path):
    ds = tmp_path / "echo"
    # Time is the first array axis, one frame per unit along it.
    geometry = Geometry((1.0, 0.5, 0.5), (0.0, 0.0, 0.0), Geometry.identity(3).direction)
    for i in range(6):
        image, label = generate_moving_sequence((48, 48), frames=16,
                                                rng=np.random.default_rng(i))
        split = "Tr" if i < 5 else "Ts"
        write_image(ds / f"images{split}" / f"seq{i}_0000.nii.gz", image.astype(np.float32),
                    geometry)
        write_image(ds / f"labels{split}" / f"seq{i}.nii.gz", label.astype(np.uint8), geometry)
    write_dataset_json(ds, ["US"], ["background", "chamber", "wall"], 5, ".nii.gz", "echo")

    state = train(ds, tmp_path / "run", progress_bar=False, grid=(16, 48, 48), model=TINY_3D,
                  keep_aspect=False,
                  train=TrainConfig(batch_size=2, epochs=4, iters_per_epoch=8, lr=3e-3,
                                    val_cases=("seq4",), warmup_steps=4))
    dice = [row["val_dice"] for row in state.history]
    assert dice[-1] > dice[0], dice  # it learns across frames

    out = tmp_path / "pred"
    predict_folder(tmp_path / "run", ds / "imagesTs", out, steps=5, progress_bar=False)
    labels, geo = read_image(out / "seq5.nii.gz")
    assert labels.shape == (1, 16, 48, 48)  # every frame segmented, in place
    assert geo.spacing == (1.0, 0.5, 0.5)
    assert set(np.unique(labels)) <= {0, 1, 2}
