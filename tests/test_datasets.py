"""Tests of rfstore.datasets: scanning, decoding, preprocessing, batching."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from image_fixtures import (
    EXIF_ROTATED_IMAGE,
    MIXED_CLASSES,
    make_bad_files,
    make_mixed_image_folder,
    noisy_rgb_image,
    png_bytes,
    write_png_16bit_gray,
    write_png_16bit_rgb,
)
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import DataLoader

from rfstore.datasets import (
    BadImageError,
    ImageBatch,
    ImageFolderDataset,
    ImageFolderIndex,
    ImageSizeMismatchError,
    Preprocessing,
    SkippedFile,
    collate_images,
    load_rgb,
    reasons,
    scan_image_folder,
)

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mixed")
    return root, make_mixed_image_folder(root)


@pytest.fixture(scope="module")
def folder_with_bad_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("with_bad")
    make_mixed_image_folder(root, seed=1)
    bad = make_bad_files(root / "class_b" / "bad")
    return root, {f"class_b/bad/{name}": reason for name, reason in bad.items()}


def _touch_image(path: Path, width: int = 8, height: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noisy_rgb_image(width, height, np.random.default_rng(len(str(path)))).save(path)


def _loaded_pixels(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path))


def _pil_rgb_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------- scanning


def test_scan_finds_every_mixed_image_in_sorted_order_with_class_labels(mixed_folder):
    root, written = mixed_folder
    index = scan_image_folder(root)
    assert index.paths == tuple(sorted(written))
    assert index.classes == MIXED_CLASSES
    expected_labels = [MIXED_CLASSES.index(path.split("/")[0]) for path in index.paths]
    assert index.labels.dtype == np.int64
    assert index.labels.tolist() == expected_labels
    assert index.skipped == ()
    assert index.root == root.resolve()
    assert index.image_path(0) == root.resolve() / index.paths[0]


def test_scan_sorts_by_posix_path_string_and_labels_root_images_minus_one(tmp_path):
    for relative in ["b.png", "a.png", "a-b.png", "a/b.png", "a/z/deep.png", "c/x.JPEG", "B.png"]:
        _touch_image(tmp_path / relative)
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("ignored")

    index = scan_image_folder(tmp_path)

    # "-" < "." < "/" < letters: string order, not per-component order.
    assert index.paths == ("B.png", "a-b.png", "a.png", "a/b.png", "a/z/deep.png", "b.png", "c/x.JPEG")
    assert index.classes == ("a", "c")
    assert index.labels.tolist() == [-1, -1, -1, 0, 0, -1, 1]


def test_scan_without_subfolders_gives_all_labels_minus_one(tmp_path):
    for name in ["x.png", "y.jpg"]:
        _touch_image(tmp_path / name)
    index = scan_image_folder(tmp_path)
    assert index.classes == ()
    assert index.labels.tolist() == [-1, -1]


def test_scan_leaves_out_top_level_masks_directory_only(tmp_path):
    _touch_image(tmp_path / "cat" / "1.png")
    _touch_image(tmp_path / "masks" / "1.png")
    _touch_image(tmp_path / "cat" / "masks" / "2.png")
    index = scan_image_folder(tmp_path)
    assert index.paths == ("cat/1.png", "cat/masks/2.png")
    assert index.classes == ("cat",)


def test_scan_of_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        scan_image_folder(tmp_path / "file.png")


def test_scan_skips_symlinks_that_leave_the_root_and_keeps_ones_inside(tmp_path):
    root = tmp_path / "data"
    _touch_image(root / "cls" / "real.png")
    _touch_image(tmp_path / "outside.png")
    _touch_image(tmp_path / "outside_dir" / "x.png")
    try:
        os.symlink(tmp_path / "outside.png", root / "cls" / "escape.png")
        os.symlink("real.png", root / "cls" / "alias.png")
        os.symlink(tmp_path / "outside_dir", root / "linked_dir")
    except OSError:
        pytest.skip("symlinks not supported here")
    index = scan_image_folder(root)
    assert index.paths == ("cls/alias.png", "cls/real.png")
    assert SkippedFile("cls/escape.png", reasons.SYMLINK_OUTSIDE_ROOT) in index.skipped
    assert SkippedFile("linked_dir", reasons.DIRECTORY_SYMLINK) in index.skipped


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads everything")
def test_scan_skips_unreadable_files(tmp_path):
    _touch_image(tmp_path / "ok.png")
    _touch_image(tmp_path / "secret.png")
    (tmp_path / "secret.png").chmod(0)
    try:
        index = scan_image_folder(tmp_path)
    finally:
        (tmp_path / "secret.png").chmod(0o644)
    assert index.paths == ("ok.png",)
    assert index.skipped == (SkippedFile("secret.png", "unreadable: Permission denied"),)


def test_scan_skips_files_it_cannot_read(tmp_path, monkeypatch):
    _touch_image(tmp_path / "ok.png")
    _touch_image(tmp_path / "secret.png")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: not str(path).endswith("secret.png") and real_access(path, mode)
    )
    index = scan_image_folder(tmp_path)
    assert index.paths == ("ok.png",)
    assert index.skipped == (SkippedFile("secret.png", "unreadable: Permission denied"),)


def test_scan_records_hidden_entries_without_descending(tmp_path):
    _touch_image(tmp_path / "cls" / "a.png")
    _touch_image(tmp_path / ".git" / "objects" / "b.png")
    _touch_image(tmp_path / "cls" / ".c.png")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    index = scan_image_folder(tmp_path)
    assert index.paths == ("cls/a.png",)
    assert index.skipped == (
        SkippedFile(".git", reasons.HIDDEN_DIRECTORY),
        SkippedFile("cls/.c.png", reasons.HIDDEN_FILE),
    )


def test_digest_is_stable_independent_of_root_and_changes_with_content(tmp_path, mixed_folder):
    root, _ = mixed_folder
    index = scan_image_folder(root)
    assert scan_image_folder(root).digest() == index.digest()
    assert len(index.digest()) == 64

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert scan_image_folder(copy).digest() == index.digest()
    _touch_image(copy / "class_a" / "new.png")
    assert scan_image_folder(copy).digest() != index.digest()


def test_index_is_a_read_only_value(mixed_folder):
    root, _ = mixed_folder
    index = scan_image_folder(root)
    assert index == scan_image_folder(root)
    assert hash(index) == hash(scan_image_folder(root))
    assert len(index) == len(index.paths)
    with pytest.raises(ValueError):
        index.labels[0] = 5
    with pytest.raises(ValueError, match="shape"):
        ImageFolderIndex(root=root, paths=("a.png",), labels=np.zeros(2), classes=())


# ---------------------------------------------------------------------------- bad files


def test_every_bad_file_is_skipped_at_scan_or_reported_at_load(folder_with_bad_files):
    root, expected = folder_with_bad_files
    index = scan_image_folder(root)
    skipped = {item.path: item.reason for item in index.skipped}
    dataset = ImageFolderDataset.from_index(index, Preprocessing.imagenet())
    load_errors = {index.paths[image_index]: error for image_index, _, error in dataset if error}

    for path, reason in expected.items():
        found = skipped.get(path, load_errors.get(path))
        assert found is not None, f"{path} was neither skipped nor reported"
        assert found.startswith(reason), f"{path}: {found!r} does not start with {reason!r}"
    assert set(skipped) | set(load_errors) == set(expected)

    scan_time = {reasons.EMPTY_FILE, reasons.DIRECTORY_WITH_IMAGE_EXTENSION, reasons.HIDDEN_FILE}
    assert {path for path, reason in expected.items() if reason in scan_time} <= set(skipped)


def test_load_rgb_reasons_for_bad_files(tmp_path):
    expected = make_bad_files(tmp_path)
    for name in ["empty.jpg", "truncated.jpg", "text.png", "bomb.png", "bomb_warning.png"]:
        with pytest.raises(BadImageError) as caught:
            load_rgb(tmp_path / name)
        assert caught.value.reason.startswith(expected[name])
        assert isinstance(caught.value, ValueError)
    with pytest.raises(BadImageError, match=r"decompression bomb \(900000000 pixels\)"):
        load_rgb(tmp_path / "bomb.png")
    with pytest.raises(BadImageError) as caught:
        load_rgb(tmp_path / "directory.jpg")
    assert caught.value.reason == reasons.NOT_A_REGULAR_FILE
    with pytest.raises(BadImageError) as caught:
        load_rgb(tmp_path / "missing.jpg")
    assert caught.value.reason == "unreadable: No such file or directory"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_rgb_applies_the_current_pixel_limit(tmp_path, monkeypatch):
    _touch_image(tmp_path / "x.png", 300, 200)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError) as caught:
        load_rgb(tmp_path / "x.png")
    assert caught.value.reason == "decompression bomb (60000 pixels)"


def test_load_rgb_rejects_zero_size_image(tmp_path):
    (tmp_path / "zero.png").write_bytes(png_bytes(0, 5, 8, 0, b""))
    with pytest.raises(BadImageError) as caught:
        load_rgb(tmp_path / "zero.png")
    # Pillow refuses to identify a zero-size PNG; formats it does open get ZERO_SIZE_IMAGE.
    assert caught.value.reason in {reasons.NOT_AN_IMAGE, reasons.ZERO_SIZE_IMAGE}


def test_bad_image_error_pickles_with_reason():
    error = pickle.loads(pickle.dumps(BadImageError(Path("a/b.jpg"), reasons.TRUNCATED)))
    assert error.reason == reasons.TRUNCATED
    assert error.path == Path("a/b.jpg")
    assert str(error) == "a/b.jpg: truncated"


# ---------------------------------------------------------------------------- decoding


def test_every_mixed_image_loads_as_rgb(mixed_folder):
    root, written = mixed_folder
    for relative in written:
        image = load_rgb(root / relative)
        assert image.mode == "RGB", relative
        assert np.asarray(image).shape[2] == 3


@pytest.mark.parametrize(
    "relative",
    [
        "class_b/cmyk.jpg",
        "class_a/palette.gif",
        "class_a/palette_transparent.png",
        "class_a/rgba.png",
        "class_a/gray_alpha.png",
        "class_a/bilevel.pbm",
        "class_b/gray.jpg",
        "class_b/animated.gif",
        "class_a/jpeg_rgb.jpg",
    ],
)
def test_conversions_equal_pil_convert_rgb(mixed_folder, relative):
    root, _ = mixed_folder
    np.testing.assert_array_equal(_loaded_pixels(root / relative), _pil_rgb_pixels(root / relative))


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535, 1000, 257]], dtype=np.uint16)
    write_png_16bit_gray(tmp_path / "gray16.png", values)
    with Image.open(tmp_path / "gray16.png") as image:
        assert image.mode.startswith("I")
    pixels = _loaded_pixels(tmp_path / "gray16.png")
    assert pixels.shape == (1, 5, 3)
    assert pixels[0, :, 0].tolist() == [0, 128, 255, 4, 1]
    assert (pixels == pixels[..., :1]).all()


def test_16bit_rgb_png_keeps_its_range(tmp_path):
    values = np.array([[[65535, 32768, 0], [0, 65535, 32768]]], dtype=np.uint16)
    write_png_16bit_rgb(tmp_path / "rgb16.png", values)
    pixels = _loaded_pixels(tmp_path / "rgb16.png").astype(int)
    np.testing.assert_allclose(pixels, np.array([[[255, 128, 0], [0, 255, 128]]]), atol=1)


def test_16bit_pgm_opened_as_mode_i_is_scaled(tmp_path):
    values = np.array([[65535, 32768, 0]], dtype=">u2")
    (tmp_path / "gray16.pgm").write_bytes(b"P5 3 1 65535\n" + values.tobytes())
    with Image.open(tmp_path / "gray16.pgm") as image:
        assert image.mode in {"I", "I;16", "I;16B"}
    assert _loaded_pixels(tmp_path / "gray16.pgm")[0, :, 0].tolist() == [255, 128, 0]


def test_float_tiff_is_read_as_intensities_in_unit_range(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    assert _loaded_pixels(tmp_path / "float.tif")[0, :, 0].tolist() == [0, 128, 255, 255, 0, 0]


def test_exif_orientation_gives_upright_image(mixed_folder):
    root, _ = mixed_folder
    path = root / EXIF_ROTATED_IMAGE
    with Image.open(path) as stored:
        assert stored.size == (320, 240)
        reference = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    upright = load_rgb(path)
    assert upright.size == (240, 320)
    np.testing.assert_array_equal(np.asarray(upright), reference)
    assert upright.getexif().get(0x0112, 1) == 1


# ---------------------------------------------------------------------------- preprocessing


def _torchvision_reference(resize: int, crop: int, mean, std) -> T.Compose:
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def test_imagenet_preprocessing_equals_torchvision_compose_exactly(mixed_folder):
    root, written = mixed_folder
    preprocessing = Preprocessing.imagenet()
    reference = _torchvision_reference(256, 224, preprocessing.mean, preprocessing.std)
    for relative in written:
        image = load_rgb(root / relative)
        tensor = preprocessing(image)
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 224, 224)
        assert torch.equal(tensor, reference(image)), relative


def test_custom_and_tensor_preprocessing_equal_torchvision(mixed_folder):
    root, _ = mixed_folder
    image = load_rgb(root / "class_b/rgb.bmp")  # 90 x 300: crop larger than the resized width
    custom = Preprocessing(resize=100, crop=128, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    assert torch.equal(custom(image), _torchvision_reference(100, 128, custom.mean, custom.std)(image))
    assert torch.equal(Preprocessing.tensor()(image), T.ToTensor()(image))
    assert Preprocessing.tensor()(image).shape == (3, 300, 90)
    with pytest.raises(ValueError, match="RGB"):
        Preprocessing.imagenet()(image.convert("L"))


def test_preprocessing_round_trips_through_json():
    for preprocessing in [
        Preprocessing.imagenet(),
        Preprocessing.tensor(),
        Preprocessing(resize=None, crop=64, mean=None, std=None),
    ]:
        restored = Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict())))
        assert restored == preprocessing
        assert hash(restored) == hash(preprocessing)
    with pytest.raises(ValueError, match="unknown"):
        Preprocessing.from_dict({"resize": 1, "interpolation": "bicubic"})


def test_preprocessing_rejects_invalid_values():
    with pytest.raises(ValueError):
        Preprocessing(resize=0, crop=None, mean=None, std=None)
    with pytest.raises(ValueError):
        Preprocessing(resize=None, crop=None, mean=(0.5, 0.5, 0.5), std=None)
    with pytest.raises(ValueError):
        Preprocessing(resize=None, crop=None, mean=(0.5, 0.5, 0.5), std=(1.0, 0.0, 1.0))


def test_output_size_and_pixel_round_trip():
    preprocessing = Preprocessing.imagenet()
    assert preprocessing.output_size() == (224, 224)
    assert Preprocessing.tensor().output_size() is None
    pixels = torch.rand(2, 3, 5, 7)
    normalised = preprocessing.from_pixels(pixels)
    assert torch.allclose(normalised[:, 0], (pixels[:, 0] - 0.485) / 0.229)
    assert torch.allclose(preprocessing.to_pixels(normalised), pixels, atol=1e-6)
    assert torch.equal(T.Normalize(preprocessing.mean, preprocessing.std)(pixels[0]), normalised[0])
    assert Preprocessing.tensor().to_pixels(pixels) is pixels


# ---------------------------------------------------------------------------- dataset and batching


def test_dataset_items_for_good_and_bad_images(folder_with_bad_files):
    root, _ = folder_with_bad_files
    index = scan_image_folder(root)
    bad = index.paths.index("class_b/bad/truncated.jpg")
    good = index.paths.index("class_a/png_rgb.png")

    cropped = ImageFolderDataset(root, index.paths, Preprocessing.imagenet(), indices=[bad, good])
    assert len(cropped) == 2
    image_index, tensor, error = cropped[0]
    assert (image_index, error) == (bad, reasons.TRUNCATED)
    assert tensor.shape == (3, 224, 224) and not tensor.any()
    image_index, tensor, error = cropped[1]
    assert (image_index, error) == (good, "")
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 224, 224)

    native = ImageFolderDataset(root, index.paths, Preprocessing.tensor(), indices=[bad, good])
    assert native[0][1].shape == (3, 1, 1)
    assert native[1][1].shape == (3, 260, 180)
    with pytest.raises(IndexError):
        ImageFolderDataset(root, index.paths, Preprocessing.tensor(), indices=[len(index.paths)])


def test_collate_stacks_good_images_and_lists_bad_ones(folder_with_bad_files):
    root, _ = folder_with_bad_files
    index = scan_image_folder(root)
    dataset = ImageFolderDataset.from_index(index, Preprocessing.imagenet())
    batch = collate_images([dataset[i] for i in range(len(dataset))])
    assert isinstance(batch, ImageBatch)
    indices, images, errors = batch
    assert indices.dtype == torch.int64
    assert indices.tolist() == list(range(len(dataset)))
    bad = {i for i, _ in errors}
    good = [i for i in indices.tolist() if i not in bad]
    assert images.shape == (len(good), 3, 224, 224)
    for row, image_index in enumerate(good):
        assert torch.equal(images[row], dataset[image_index][1])
    assert {index.paths[i] for i, _ in errors} == {
        "class_b/bad/bomb.png",
        "class_b/bad/bomb_warning.png",
        "class_b/bad/text.png",
        "class_b/bad/truncated.jpg",
    }

    only_bad = collate_images([dataset[index.paths.index("class_b/bad/text.png")]])
    assert only_bad.images.shape == (0, 3, 224, 224)
    assert only_bad.indices.tolist() == [index.paths.index("class_b/bad/text.png")]
    assert only_bad.errors == [(only_bad.indices.item(), reasons.NOT_AN_IMAGE)]


def test_dataloader_with_workers_matches_single_process(folder_with_bad_files):
    root, _ = folder_with_bad_files
    index = scan_image_folder(root)
    dataset = ImageFolderDataset.from_index(index, Preprocessing.imagenet())

    def run(num_workers: int) -> list[ImageBatch]:
        loader = DataLoader(dataset, batch_size=5, num_workers=num_workers, collate_fn=collate_images)
        return list(loader)

    single, parallel = run(0), run(2)
    assert len(single) == len(parallel) == -(-len(dataset) // 5)
    for one, other in zip(single, parallel):
        assert torch.equal(one.indices, other.indices)
        assert torch.equal(one.images, other.images)
        assert one.errors == other.errors


def test_size_mismatch_error_names_both_images(mixed_folder):
    root, _ = mixed_folder
    index = scan_image_folder(root)
    first = index.paths.index("class_a/jpeg_rgb.jpg")
    second = index.paths.index("class_a/png_rgb.png")
    dataset = ImageFolderDataset.from_index(index, Preprocessing.tensor(), indices=[first, second])

    with pytest.raises(ImageSizeMismatchError) as caught:
        dataset.collate([dataset[0], dataset[1]])
    message = str(caught.value)
    assert "class_a/jpeg_rgb.jpg" in message and "class_a/png_rgb.png" in message
    assert "(3, 200, 300)" in message and "(3, 260, 180)" in message
    assert caught.value.image_ids == ("class_a/jpeg_rgb.jpg", "class_a/png_rgb.png")
    assert isinstance(caught.value, ValueError)

    with pytest.raises(ImageSizeMismatchError, match=f"image #{first}"):
        collate_images([dataset[0], dataset[1]])

    # A worker's error is re-raised in the main process with the same type and message.
    batches = iter(DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=dataset.collate))
    with pytest.raises(ImageSizeMismatchError, match="class_a/png_rgb.png") as caught:
        next(batches)
    del caught, batches  # shut the worker down now, not at a later garbage collection


def test_dataset_pickles_and_keeps_ids(mixed_folder):
    root, _ = mixed_folder
    index = scan_image_folder(root)
    dataset = ImageFolderDataset.from_index(index, Preprocessing.imagenet(), indices=[3, 1])
    restored = pickle.loads(pickle.dumps(dataset))
    assert list(restored.image_ids) == list(index.paths)
    assert restored[0][0] == 3
    assert torch.equal(restored[1][1], dataset[1][1])
