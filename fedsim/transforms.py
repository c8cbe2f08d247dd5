"""[[data.transforms]] as the input pipeline's ops (fedsim.inputs): which stage each runs in, checked shapes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedsim.errors import DataError
from fedsim.inputs import RANDOM, InputPipeline, Op
from fedsim.scenario import TransformSection


def op_of(t: TransformSection) -> Op:
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in t.model_dump(exclude={"stage"}).items()}
    return Op(**settings)


def stages(t: TransformSection) -> tuple[str, ...]:
    stage = t.stage or ("train" if t.kind in RANDOM else "both")
    return ("train", "test") if stage == "both" else (stage,)


def pipeline_for(transforms: Sequence[TransformSection], stored_shape: tuple[int, int, int], channels: int
                 ) -> InputPipeline:
    """The pipeline of image data stored as `stored_shape` for a model of `channels` channels; one line if a
    random transform is asked for at test time, a normalisation has the wrong number of channels, or the two
    stages end at different shapes."""
    for i, t in enumerate(transforms):
        if t.kind in RANDOM and "test" in stages(t):
            raise DataError(f"data.transforms.{i}", f"'{t.kind}' is random, so it cannot run at test time",
                            "give it stage = 'train' (the default)")
        if t.kind == "normalize" and not (len(t.mean) == len(t.std) and len(t.mean) in (1, channels)):
            raise DataError(f"data.transforms.{i}", f"normalize has {len(t.mean)} means and {len(t.std)} stds for "
                            f"{channels}-channel images", f"give 1 or {channels} of each")
    pipeline = InputPipeline(stored_shape, channels, [op_of(t) for t in transforms if "train" in stages(t)],
                             [op_of(t) for t in transforms if "test" in stages(t)])
    example = torch.zeros(1, int(torch.tensor(stored_shape).prod()), dtype=torch.uint8)
    train_shape = tuple(pipeline.train(example, torch.Generator().manual_seed(0)).shape[1:])
    test_shape = pipeline.output_shape
    if train_shape != test_shape:
        raise DataError("data.transforms", f"training inputs come out {train_shape} but test inputs {test_shape}",
                        "end both stages at one size (e.g. a test-stage resize and center_crop)")
    return pipeline
