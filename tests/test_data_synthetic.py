"""Synthetic dataset: determinism, statistics, atomic and concurrent generation, catalog names."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from drdet.data import catalog
from drdet.data.datasets import synthetic
from drdet.data.datasets.synthetic import SyntheticSpec, ensure_dataset, generate_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = SyntheticSpec(num_images=12, seed=3)


def test_same_seed_gives_byte_identical_json_and_images(tmp_path):
    a, b = ensure_dataset(SMALL, str(tmp_path / "a")), ensure_dataset(SMALL, str(tmp_path / "b"))
    json_a = open(os.path.join(a, "annotations.json"), "rb").read()
    assert json_a == open(os.path.join(b, "annotations.json"), "rb").read()
    for name in ("000000.jpg", "000011.jpg"):
        assert (
            open(os.path.join(a, "images", name), "rb").read()
            == open(os.path.join(b, "images", name), "rb").read()
        )
    c = ensure_dataset(SyntheticSpec(num_images=12, seed=4), str(tmp_path / "c"))
    assert open(os.path.join(c, "annotations.json"), "rb").read() != json_a
    data = json.loads(json_a)
    assert len(data["images"]) == 12 and data["info"]["generator"]["seed"] == 3


def test_statistics_classes_small_objects_imbalance():
    spec = SyntheticSpec(num_images=60, seed=0)
    objects = [o for i in range(spec.num_images) for o in generate_image(spec, i)[1]]
    labels = np.array([o["category_id"] for o in objects])
    sides = np.array([max(o["bbox"][2:]) for o in objects])
    counts = np.bincount(labels, minlength=6)[1:]
    assert set(labels.tolist()) == {1, 2, 3, 4, 5}  # all five classes occur
    assert counts[0] > 2.5 * counts[4]  # imbalance: circles >> rings
    assert (sides <= 12).mean() > 0.1  # many small objects...
    assert sides.min() >= 4 and sides.max() > 60  # ...and some large ones
    assert 2.5 < len(objects) / spec.num_images < 6
    for o in objects:  # boxes inside the image
        x, y, w, h = o["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 256 and y + h <= 256


def _mask_box(kind, cx, cy, extent, angle):
    mask = np.zeros((256, 256), np.uint8)
    synthetic._draw_shape(mask, kind, cx, cy, extent, angle)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@pytest.mark.parametrize(
    "kind, angle, expected",
    [
        # extent 40 at centre (100.3, 120.6); expected boxes from the geometry, within the
        # 1.5 px that rasterisation (cv2 fills every pixel the outline touches) may add
        ("circle", 0.0, [80.3, 100.6, 120.3, 140.6]),
        ("ring", 0.0, [80.3, 100.6, 120.3, 140.6]),
        ("square", 0.0, [80.3, 100.6, 120.3, 140.6]),
        ("square", np.pi / 4, [80.3, 100.6, 120.3, 140.6]),  # rotated, still fits the extent
        ("cross", 0.0, [80.3, 100.6, 120.3, 140.6]),
        # vertex up, circumradius 20: half width 20 sin 60 = 17.32, from -20 to +10 vertically
        ("triangle", 0.0, [100.3 - 17.32, 100.6, 100.3 + 17.32, 130.6]),
    ],
)
def test_shape_extent_matches_geometry(kind, angle, expected):
    np.testing.assert_allclose(_mask_box(kind, 100.3, 120.6, 40.0, angle), expected, atol=1.5)


def test_interrupted_generation_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "syn"
    real_write = synthetic.write_dataset

    def interrupted(spec, folder):
        os.makedirs(os.path.join(folder, "images"))
        open(os.path.join(folder, "images", "000000.jpg"), "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(SMALL, str(out))
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []  # temp removed
    monkeypatch.setattr(synthetic, "write_dataset", real_write)
    ensure_dataset(SMALL, str(out))
    assert len(os.listdir(out / "images")) == 12


def test_concurrent_generators_agree(tmp_path):
    out = tmp_path / "shared"
    cmd = [
        sys.executable,
        "-m",
        "drdet.data.datasets.synthetic",
        "--out",
        str(out),
        "--num-images",
        "12",
        "--seed",
        "3",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    reference = ensure_dataset(SMALL, str(tmp_path / "reference"))
    assert (
        open(out / "annotations.json", "rb").read()
        == open(os.path.join(reference, "annotations.json"), "rb").read()
    )
    assert sorted(os.listdir(out / "images")) == sorted(
        os.listdir(os.path.join(reference, "images"))
    )
    leftovers = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert leftovers == []


def test_catalog_generates_synthetic_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path))
    ds = catalog.get_dataset("synthetic:8:2", None, is_train=True)
    assert ds.num_classes == 5 and ds.class_names == list(synthetic.CLASSES)
    assert os.path.isfile(tmp_path / "synthetic" / "8x256px_seed2" / "annotations.json")
    image, target, _ = ds[0]
    assert image.size == (256, 256) and len(target["boxes"]) > 0
    assert synthetic.SYNTHETIC_DATASETS["synthetic_train"]["num_images"] == 600
    assert synthetic.SYNTHETIC_DATASETS["synthetic_val"]["num_images"] == 100
    assert (
        synthetic.SYNTHETIC_DATASETS["synthetic_val"]["seed"]
        != synthetic.SYNTHETIC_DATASETS["synthetic_train"]["seed"]
    )
    assert catalog.DATASET_TYPES.get("synthetic").names is synthetic.SYNTHETIC_DATASETS


def test_bad_spec_raises():
    with pytest.raises(ValueError, match="min_object_size"):
        SyntheticSpec(min_object_size=2)
    with pytest.raises(ValueError, match="image_format"):
        SyntheticSpec(image_format="gif")


def test_command_line_regenerates_for_other_settings(tmp_path):
    """`python -m drdet.data.datasets.synthetic --out DIR` run again with another seed or size
    replaces DIR's data (the reference: ensure_dataset of that spec in a fresh folder); with the
    same settings it keeps them; ensure_dataset alone refuses a folder of other settings."""
    out = str(tmp_path / "shapes")

    def generate(images, seed, size):
        synthetic.main(
            ["--out", out, "--num-images", images, "--seed", seed, "--image-size", size]
            + ["--max-object-size", "32"]
        )

    generate("2", "3", "64")
    kept = os.stat(os.path.join(out, "annotations.json")).st_mtime_ns
    generate("2", "3", "64")
    assert os.stat(os.path.join(out, "annotations.json")).st_mtime_ns == kept
    generate("3", "4", "96")
    fresh = SyntheticSpec(num_images=3, seed=4, image_size=96, max_object_size=32)
    reference = ensure_dataset(fresh, str(tmp_path / "reference"))
    for name in ("annotations.json", "images/000002.jpg"):
        with (
            open(os.path.join(out, name), "rb") as a,
            open(os.path.join(reference, name), "rb") as b,
        ):
            assert a.read() == b.read(), name
    assert sorted(os.listdir(os.path.join(out, "images"))) == [
        "000000.jpg",
        "000001.jpg",
        "000002.jpg",
    ]
    with pytest.raises(ValueError, match="other settings"):
        ensure_dataset(SyntheticSpec(num_images=2, seed=3, image_size=64, max_object_size=32), out)


def test_command_line_sets_the_density(tmp_path):
    """--mean-objects and --mean-distractors reach the spec: the json equals that of
    ensure_dataset with the same spec, and records the densities."""
    out = str(tmp_path / "dense")
    synthetic.main(
        ["--out", out, "--num-images", "4", "--seed", "5", "--image-size", "64"]
        + ["--max-object-size", "32", "--mean-objects", "7", "--mean-distractors", "1"]
    )
    spec = SyntheticSpec(
        num_images=4,
        seed=5,
        image_size=64,
        max_object_size=32,
        mean_objects=7.0,
        mean_distractors=1.0,
    )
    reference = ensure_dataset(spec, str(tmp_path / "reference"))
    with (
        open(os.path.join(out, "annotations.json"), "rb") as a,
        open(os.path.join(reference, "annotations.json"), "rb") as b,
    ):
        made = a.read()
        assert made == b.read()
    generator = json.loads(made)["info"]["generator"]
    assert (generator["mean_objects"], generator["mean_distractors"]) == (7.0, 1.0)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folder left
