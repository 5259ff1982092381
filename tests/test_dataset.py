"""Speed-ups that must not change a number: TrainingCacheDataset gives the batches of MONAI's CacheDataset (plain
tensors, metadata tracking restored), ChannelArgmaxd the output of MONAI's AsDiscreted."""

import os

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, MetaTensor, get_track_meta
from monai.transforms import Compose, Lambdad, RandFlipd

from mdm_med.data.dataset import TrainingCacheDataset

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "mdm_glas", "configs")


def _bundle_pipeline(tiny_glas, section):
    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "train.json"))
    parser.update({"dataset_dir": tiny_glas, "num_val": 2, "image_scale": 1.0, "crop_size": 32, "label_fraction": 1.0})
    return parser.get_parsed_content(f"{section}#items"), parser.get_parsed_content(f"{section}#preprocessing")


def _batches(dataset_cls, items, transform, seed=3, n=6):
    ds = dataset_cls(items, transform=transform, progress=False)
    g = torch.Generator().manual_seed(seed)  # MONAI's DataLoader seeds the transforms from it (num_workers 0)
    loader = DataLoader(ds, batch_size=4, sampler=torch.utils.data.RandomSampler(ds, True, n * 4, generator=g),
                        generator=torch.Generator().manual_seed(seed))
    return list(loader)


@pytest.mark.parametrize("section", ["train", "pretrain"])
def test_same_batches_as_cache_dataset(tiny_glas, section):
    items, transform = _bundle_pipeline(tiny_glas, section)
    reference = _batches(CacheDataset, items, transform)
    fast = _batches(TrainingCacheDataset, items, transform)
    assert len(fast) == len(reference) == 6
    keys = [k for k in reference[0] if isinstance(reference[0][k], torch.Tensor)]
    assert "image" in keys and (section == "pretrain" or "label" in keys)
    for a, b in zip(reference, fast):
        for k in keys:
            assert torch.equal(a[k], b[k]), k
            assert type(b[k]) is torch.Tensor  # no MetaTensor
    # the augmentation is live: two seeds give other crops
    other = _batches(TrainingCacheDataset, items, transform, seed=4)
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(fast, other))
    assert get_track_meta() is True


def test_cache_holds_plain_tensors_and_tracking_is_restored_on_error():
    items = [{"image": MetaTensor(torch.arange(8.0).view(1, 2, 4))} for _ in range(3)]

    def fail_on_negative(x):
        assert not isinstance(x, MetaTensor) and not get_track_meta()  # random part runs untracked
        if x.min() < 0:
            raise RuntimeError("negative")
        return x

    transform = Compose([RandFlipd("image", prob=1.0, spatial_axis=1), Lambdad("image", fail_on_negative)])
    ds = TrainingCacheDataset(items, transform=transform, progress=False)
    assert all(type(c["image"]) is torch.Tensor for c in ds._cache)
    assert torch.equal(ds[0]["image"], torch.arange(8.0).view(1, 2, 4).flip(2)) and get_track_meta() is True
    ds._cache[1]["image"] -= 100
    with pytest.raises(RuntimeError):
        ds[1]
    assert get_track_meta() is True


def test_refuses_partial_cache():
    items = [{"image": torch.zeros(1, 2, 2)} for _ in range(4)]
    with pytest.raises(ValueError, match="caches every item"):
        TrainingCacheDataset(items, transform=Compose([RandFlipd("image", prob=0.5)]), cache_rate=0.5,
                             progress=False)


@pytest.mark.parametrize("shape", [(2, 13, 17), (3, 5, 6, 7)])
@pytest.mark.parametrize("to_onehot", [None, "classes"])
def test_channel_argmaxd_equals_monai_as_discreted(shape, to_onehot):
    from monai.transforms import AsDiscreted

    from mdm_med.data.transforms import ChannelArgmaxd

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, shape, generator=g).float()  # many ties: the first maximum must win
    x[1, 2, 3] = float("nan")  # torch.argmax takes a NaN as the maximum
    pred = MetaTensor(x.clone(), affine=torch.diag(torch.tensor([2.0] * (len(shape) - 1) + [1.0])),
                      meta={"filename_or_obj": "a.png"})
    kw = dict(argmax=True, to_onehot=shape[0] if to_onehot else None)
    want = AsDiscreted("pred", **kw)({"pred": pred.clone()})["pred"]
    got = ChannelArgmaxd("pred", **kw)({"pred": pred.clone()})["pred"]
    assert isinstance(got, MetaTensor) and got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.as_tensor(), want.as_tensor())
    assert torch.equal(got.affine, want.affine) and got.meta["filename_or_obj"] == "a.png"
