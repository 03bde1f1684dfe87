import numpy as np
import pytest
import torch

from models import get_model, get_model_entry, list_models, load_model
from models.datasets import DIGITS_CLASSES, DatasetError, digits_split, folder_split
from models.train import main, random_affine, replace_head, train

LENET = get_model_entry("lenet5").input_spec
IMAGENET = get_model_entry("resnet18").input_spec


def test_digits_split_is_fixed_stratified_and_shared_across_specs():
    a, b = digits_split(LENET), digits_split(IMAGENET)
    assert (len(a.train), len(a.heldout)) == (1437, 360)
    assert a.classes == DIGITS_CLASSES
    np.testing.assert_array_equal(a.heldout.labels, b.heldout.labels)
    assert [x is y for x, y in zip(a.heldout.images, b.heldout.images, strict=True)] == [True] * 360
    counts = np.bincount(a.heldout.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each digit
    assert not set(map(id, a.train.images)) & set(map(id, a.heldout.images))


def test_digits_are_preprocessed_by_the_spec():
    split = digits_split(LENET)
    x, _ = split.heldout[0]
    assert x.shape == (1, 32, 32) and x.dtype == np.float32
    assert -1.0 <= x.min() < x.max() <= 1.0  # (0..1 - 0.5) / 0.5
    rgb = digits_split(IMAGENET).heldout[0][0]
    assert rgb.shape == (3, 224, 224)
    np.testing.assert_allclose(rgb[0] * 0.229 + 0.485, rgb[1] * 0.224 + 0.456, atol=1e-5)  # grey in RGB


def test_replace_head_swaps_the_last_linear_of_every_family():
    for name in ("resnet18", "googlenet", "densenet121", "alexnet", "lenet5"):
        model = replace_head(get_model(name), 3)
        with torch.inference_mode():
            out = model(torch.randn(1, *get_model_entry(name).input_spec.shape))
        assert out.shape == (1, 3), name
    assert "lenet5" in list_models()


def test_random_affine_is_seeded_and_keeps_shape():
    x = torch.randn(4, 1, 32, 32)
    a = random_affine(x, torch.Generator().manual_seed(1))
    b = random_affine(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    torch.testing.assert_close(random_affine(x, torch.Generator(), strength=0.0), x, atol=1e-5, rtol=0)


def test_lenet5_learns_digits(tmp_path, capsys):
    out = tmp_path / "lenet5.pt"
    assert main(["lenet5", "--dataset", "digits", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed
    loaded = load_model("lenet5", weights=str(out))
    metrics = loaded.weights["trained"]["metrics"]
    assert metrics["heldout_accuracy"] > 0.97, metrics
    assert f"{metrics['heldout_accuracy']:.2%}" in printed
    assert loaded.labels == list(DIGITS_CLASSES)
    assert loaded.input_spec == LENET
    assert loaded.weights["trained"]["dataset"]["heldout_size"] == 360
    # the checkpoint's held-out accuracy is reproducible from the saved weights
    x, y = digits_split(LENET).heldout.arrays()
    with torch.inference_mode():
        acc = (loaded.model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc == pytest.approx(metrics["heldout_accuracy"])


def _write_folder(root, digits=(0, 1, 7), per_class=25):
    split = digits_split(LENET)
    for d in digits:
        folder = root / f"digit_{d}"
        folder.mkdir(parents=True)
        picks = [i for i, y in enumerate(split.train.labels) if y == d][:per_class]
        for k, i in enumerate(picks):
            split.train.images[i].resize((16, 16)).save(folder / f"{k}.png")
    return root


def test_fine_tunes_on_an_image_folder(tmp_path):
    data = _write_folder(tmp_path / "data")
    result = train("lenet5", data=data, out=tmp_path / "ft.pt", epochs=8, progress=False)
    loaded = load_model("lenet5", weights=str(result.checkpoint))
    assert loaded.num_classes == 3
    assert loaded.labels == ["digit_0", "digit_1", "digit_7"]
    assert result.dataset["name"].startswith("folder:")
    assert result.dataset["heldout_size"] == 15
    assert result.heldout_accuracy >= 0.8


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        folder_split(tmp_path / "missing", LENET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot read image folder"):
        folder_split(tmp_path / "empty", LENET)
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"not a png")
    (bad / "b.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image"):
        folder_split(tmp_path / "bad", LENET).train[0]


def test_cli_errors(tmp_path, capsys):
    assert main(["resnet9000", "--out", str(tmp_path / "x.pt")]) == 2
    assert "known models: alexnet" in capsys.readouterr().err
    assert main(["lenet5", "--out", str(tmp_path / "x.pt"), "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["lenet5", "--out", str(tmp_path / "x.pt"), "--dataset", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err
