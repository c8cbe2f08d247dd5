"""[[data.transforms]]: each op against a straightforward computation, stages, and augmentation that follows the
client's own seed whatever trains it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fedsim
from fedsim.errors import DataError
from fedsim.inputs import Op, crop, flip, resized_crop, resized_crop_boxes, rotate
from fedsim.scenario import DataSection
from fedsim.transforms import pipeline_for


def images(n=4, c=3, h=7, w=9, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_crop_and_flip_are_slices():
    x = images()
    top, left = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 0, 2, 1])
    out = crop(x, top, left, 3, 5)
    for i in range(4):
        assert torch.equal(out[i], x[i, :, top[i] : top[i] + 3, left[i] : left[i] + 5])
    which = torch.tensor([True, False, True, False])
    flipped = flip(x, which)
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])


def test_random_crop_pads_with_zeros_then_crops():
    x = images()
    op = Op("random_crop", size=(7, 9), padding=2)
    out = op(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    top, left = torch.randint(0, 5, (4,), generator=g), torch.randint(0, 5, (4,), generator=g)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(4):
        assert torch.equal(out[i], padded[i, :, top[i] : top[i] + 7, left[i] : left[i] + 9])


def test_resized_crop_is_crop_then_bilinear_resize():
    x = images(h=12, w=10)
    top, left = torch.tensor([0.0, 2, 5, 1]), torch.tensor([0.0, 3, 1, 4])
    ch, cw = torch.tensor([12.0, 6, 7, 8]), torch.tensor([10.0, 5, 9, 4])
    out = resized_crop(x, top, left, ch, cw, (8, 8))
    for i in range(4):
        t, l_, h, w = int(top[i]), int(left[i]), int(ch[i]), int(cw[i])
        expected = F.interpolate(x[i : i + 1, :, t : t + h, l_ : l_ + w], size=(8, 8), mode="bilinear",
                                 align_corners=False)
        assert torch.allclose(out[i], expected[0], atol=1e-5)


def reference_box(h, w, scale, ratio, area_u, ratio_u, u, v):
    """torchvision's RandomResizedCrop.get_params, one example at a time, on given uniforms."""
    for a, r in zip(area_u, ratio_u):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * a)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r)
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return math.floor(u * (h - ch + 1)), math.floor(v * (w - cw + 1)), ch, cw
    in_ratio = w / h
    cw, ch = (w, round(w / min(ratio))) if in_ratio < min(ratio) else \
        (round(h * max(ratio)), h) if in_ratio > max(ratio) else (w, h)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@pytest.mark.parametrize(("h", "w", "scale", "ratio"), [(30, 40, (0.3, 0.9), (0.75, 4 / 3)),
                                                        (10, 100, (0.99, 1.0), (1.0, 1.0)),  # never fits
                                                        (64, 64, (0.08, 1.0), (0.75, 4 / 3))])
def test_resized_crop_boxes_follow_torchvision_s_rule(h, w, scale, ratio):
    n = 300
    boxes = torch.stack(resized_crop_boxes(n, h, w, scale, ratio, torch.Generator().manual_seed(0)), 1)
    g = torch.Generator().manual_seed(0)  # the same draws, in the same order
    area_u, ratio_u = torch.rand(n, 10, generator=g, dtype=torch.float64), torch.rand(n, 10, generator=g,
                                                                                      dtype=torch.float64)
    u, v = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    expected = [reference_box(h, w, scale, ratio, area_u[i].tolist(), ratio_u[i].tolist(), u[i].item(),
                              v[i].item()) for i in range(n)]
    assert boxes.tolist() == [list(map(float, e)) for e in expected]


def test_rotation_by_quarter_turns_is_rot90():
    x = images(h=5, w=5)
    assert torch.equal(rotate(x, torch.full((4,), 90.0)), x.rot90(1, dims=(2, 3)))
    assert torch.equal(rotate(x, torch.full((4,), -90.0)), x.rot90(-1, dims=(2, 3)))
    assert torch.equal(rotate(x, torch.zeros(4)), x)


def test_resize_center_crop_and_normalize():
    x = images(h=6, w=12)
    assert Op("resize", size=(3,))(x, None).shape == (4, 3, 3, 6)  # the shorter side, aspect kept
    assert torch.allclose(Op("resize", size=(3, 6))(x, None),
                          F.interpolate(x, size=(3, 6), mode="bilinear", align_corners=False, antialias=True))
    assert torch.equal(Op("center_crop", size=(4,))(x, None), x[..., 1:5, 4:8])
    normalised = Op("normalize", mean=(0.5, 0.4, 0.3), std=(0.1, 0.2, 0.3))(x, None)
    assert torch.allclose(normalised[:, 1], (x[:, 1] - 0.4) / 0.2)


def pipeline(transforms, shape=(1, 8, 8), channels=3):
    return pipeline_for(DataSection(dataset="digits", transforms=transforms).transforms, shape, channels)


def test_stages_random_ones_train_only_and_shapes_checked():
    p = pipeline([{"kind": "resize", "size": [12], "stage": "test"}, {"kind": "center_crop", "size": [10],
                                                                     "stage": "test"},
                  {"kind": "random_resized_crop", "size": [10], "scale": [0.6, 1.0]},
                  {"kind": "random_rotation", "degrees": 10}, {"kind": "horizontal_flip"},
                  {"kind": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}])  # FedLD's, in small
    assert [o.kind for o in p.train_ops] == ["random_resized_crop", "random_rotation", "horizontal_flip", "normalize"]
    assert [o.kind for o in p.test_ops] == ["resize", "center_crop", "normalize"]
    raw = torch.randint(0, 256, (5, 64), dtype=torch.uint8)
    assert p.test(raw).shape == p.train(raw, torch.Generator().manual_seed(0)).shape == (5, 3, 10, 10)
    with pytest.raises(DataError, match="is random, so it cannot run at test time"):
        pipeline([{"kind": "horizontal_flip", "stage": "both"}])
    with pytest.raises(DataError, match=r"training inputs come out \(3, 6, 6\) but test inputs \(3, 8, 8\)"):
        pipeline([{"kind": "random_crop", "size": [6]}])
    with pytest.raises(DataError, match="normalize has 2 means"):
        pipeline([{"kind": "normalize", "mean": [0.1, 0.2], "std": [1.0, 1.0]}])


AUGMENTED = {"data.transforms": [{"kind": "random_crop", "size": [8], "padding": 1}, {"kind": "horizontal_flip"},
                                 {"kind": "random_rotation", "degrees": 15}],
             "model.name": "cnn", "model.channels": [4]}


def test_augmentation_is_seeded_per_client_and_the_same_vectorised(small_scenario, tmp_path):
    sequential = fedsim.run(small_scenario(run__vectorize=False, **AUGMENTED), out=tmp_path / "seq")
    again = fedsim.run(small_scenario(run__vectorize=False, **AUGMENTED), out=tmp_path / "again")
    together = fedsim.run(small_scenario(run__vectorize=True, **AUGMENTED), out=tmp_path / "vec")
    plain = fedsim.run(small_scenario(run__vectorize=False, model__name="cnn", model__channels=[4]),
                       out=tmp_path / "plain")
    assert all(torch.equal(sequential.state_dict[k], again.state_dict[k]) for k in sequential.state_dict)
    for key, value in sequential.state_dict.items():
        assert torch.allclose(together.state_dict[key], value, rtol=1e-5, atol=1e-6), key
        assert not torch.allclose(plain.state_dict[key], value, atol=1e-4), key  # augmentation did something
    assert sequential.metrics[0]["train"]["loss"] != plain.metrics[0]["train"]["loss"]


def test_augmentation_under_dp_sgd_is_the_same_vectorised(small_scenario, tmp_path):
    dp = {**AUGMENTED, "privacy.mode": "dp-sgd", "privacy.noise_multiplier": 1.0, "privacy.max_grad_norm": 1.0,
          "run.rounds": 2}
    sequential = fedsim.run(small_scenario(run__vectorize=False, **dp), out=tmp_path / "seq")
    together = fedsim.run(small_scenario(run__vectorize=True, **dp), out=tmp_path / "vec")
    for key, value in sequential.state_dict.items():
        assert torch.allclose(together.state_dict[key], value, rtol=1e-4, atol=1e-5), key


@pytest.mark.slow  # make test keeps one Ray run
def test_augmented_images_from_disk_train_on_ray_as_inline(tmp_path):
    from image_fixtures import retina
    from test_images import retina_data

    root = retina(tmp_path / "Retina")
    # one client after another: bit for bit (a vectorised Ray chunk stacks other clients than inline's round)
    data = {**retina_data(root).model_dump(exclude_none=True), "transforms": AUGMENTED["data.transforms"]}
    raw = {"run": {"rounds": 2, "vectorize": False}, "data": data, "model": {"name": "cnn", "channels": [4]},
           "client": {"batch_size": 4}}
    inline = fedsim.run(fedsim.Scenario.from_dict(raw), out=tmp_path / "inline")
    on_ray = fedsim.run(fedsim.Scenario.from_dict(raw, overrides=["run.runtime=ray"]), out=tmp_path / "ray")
    assert all(torch.equal(inline.state_dict[k], on_ray.state_dict[k]) for k in inline.state_dict)
    assert [r["eval"] for r in inline.metrics] == [r["eval"] for r in on_ray.metrics]


def test_evaluation_batches_are_bounded_by_the_model_s_input_size():
    """A raw uint8 batch grows to the model's input in the pipeline: 4096 FedLD test images at 384 px would be 7 GB."""
    from fedsim.evaluation import BATCH_INPUTS, CPU_BATCH_ACTIVATIONS, batch_size_for
    from fedsim.inputs import InputPipeline

    small = torch.nn.Linear(64, 10)
    assert batch_size_for(small, torch.zeros(5, 64)) == 4096
    big = torch.nn.Identity()
    big.register_forward_pre_hook(InputPipeline((1, 256, 256), 3, [], [Op("resize", size=(384,))]))
    raw = torch.zeros(5, 256 * 256, dtype=torch.uint8)
    assert batch_size_for(big, raw.to("meta")) == BATCH_INPUTS // (3 * 384 * 384) == 37
    # on a CPU also by its activations (here the Identity's output, the pipeline's image)
    assert batch_size_for(big, raw) == CPU_BATCH_ACTIVATIONS // (3 * 384 * 384) == 18


def test_q_fedavg_s_received_loss_is_bounded_the_same_way():
    from flwr.app import ConfigRecord

    from fedsim import protocol
    from fedsim.clients.app import received_loss
    from fedsim.inputs import InputPipeline

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 384 * 384, 3))
    model.register_forward_pre_hook(InputPipeline((1, 256, 256), 3, [], [Op("resize", size=(384,))]))
    x = torch.randint(0, 256, (80, 256 * 256), dtype=torch.uint8)  # 80 > 37 a batch
    y = torch.randint(0, 3, (80,))
    batched = received_loss(ConfigRecord({protocol.REPORT_TRAIN_LOSS: True}), model, x, y, "classification")
    with torch.no_grad():
        whole = F.cross_entropy(model(x), y).item()
    assert batched[protocol.TRAIN_LOSS] == pytest.approx(whole, rel=1e-5)
