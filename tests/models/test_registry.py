import pytest
import torch

from models import (
    UnknownModelError,
    WeightsError,
    get_labels,
    get_model,
    get_model_entry,
    list_models,
    load_model,
    register_model,
    save_checkpoint,
)

FAMILY = {
    "lenet5", "alexnet", "zfnet", "googlenet",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "densenet121", "densenet161", "densenet169", "densenet201",
}  # fmt: skip

PUBLISHED = {  # parameter counts from the papers / torchvision's model cards
    "lenet5": 61_706, "alexnet": 61_100_840, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "googlenet": 6_624_904, "resnet18": 11_689_512, "resnet50": 25_557_032,
    "resnet152": 60_192_808, "densenet121": 7_978_856, "densenet161": 28_681_000,
}  # fmt: skip


def test_registry_holds_the_family():
    assert set(list_models()) == FAMILY


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_parameter_count_and_forward(name):
    entry = get_model_entry(name)
    model = get_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == entry.published_params
    if name in PUBLISHED:
        assert n_params == PUBLISHED[name]
    assert not model.training
    spec = entry.input_spec
    with torch.inference_mode():
        out = model(torch.randn(2, *spec.shape))
    assert out.shape == (2, entry.num_classes)
    assert len(get_labels(name)) == entry.num_classes


def test_random_weights_are_seeded():
    a, b, c = (get_model("lenet5", seed=s) for s in (1, 1, 2))
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.classifier[1].weight, c.classifier[1].weight)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownModelError, match="known models: alexnet, densenet121"):
        get_model("resnet9000")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet5", family="lenet")(lambda num_classes=10: None)


def test_custom_head_and_labels():
    model = get_model("resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert get_labels("resnet18", 7) == [f"class_{i}" for i in range(7)]
    assert get_labels("resnet18")[0] == "tench"
    assert get_labels("lenet5") == [str(i) for i in range(10)]


def test_imagenet_weights_missing_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        get_model("resnet18", weights="imagenet")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-") in msg
    assert "https://download.pytorch.org/models/resnet18-" in msg


def test_imagenet_weights_load_from_cache(tmp_path, monkeypatch):
    """A file in torch hub's cache goes through torchvision's weights API; nothing is downloaded."""
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = tvm.ResNet18_Weights.DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = tvm.resnet18()
    torch.save(reference.state_dict(), cache / url.rsplit("/", 1)[1])

    def from_cache_only(u, *args, **kwargs):  # torch.hub's lookup minus the hash-prefix check
        assert u == url
        return torch.load(cache / u.rsplit("/", 1)[1], weights_only=True)

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", from_cache_only)
    loaded = load_model("resnet18", weights="imagenet")
    assert loaded.weights["source"] == "imagenet"
    assert torch.equal(loaded.model.fc.weight, reference.fc.weight)


def test_lenet_has_no_imagenet_weights():
    with pytest.raises(WeightsError, match="no published ImageNet weights"):
        get_model("lenet5", weights="imagenet")


def test_checkpoint_round_trip(tmp_path):
    original = load_model("lenet5", seed=3)
    path = save_checkpoint(
        tmp_path / "lenet.pt",
        original.model,
        name="lenet5",
        num_classes=10,
        labels=original.labels,
        input_spec=original.input_spec,
        dataset="digits",
        metrics={"accuracy": 0.99},
    )
    loaded = load_model("lenet5", weights=path)
    assert loaded.weights["source"] == "checkpoint"
    assert loaded.weights["trained"] == {"dataset": "digits", "metrics": {"accuracy": 0.99}}
    assert loaded.weights["state_sha256"] == original.weights["state_sha256"]
    assert loaded.input_spec == original.input_spec


def test_plain_state_dict_infers_classes(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(get_model("lenet5", num_classes=4).state_dict(), path)
    assert load_model("lenet5", weights=path).num_classes == 4


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"not a torch file", "cannot read weights file"),
        ("wrong-model", "checkpoint of 'alexnet', not 'lenet5'"),
        ("wrong-shape", "does not fit lenet5"),
    ],
)
def test_bad_weights_files(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "wrong-model":
        torch.save({"format": "cnnserve-checkpoint/1", "model": "alexnet", "state_dict": {}}, path)
    elif content == "wrong-shape":
        torch.save({"features.0.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match=match):
        load_model("lenet5", weights=path)
