import pytest

from models.train import train


@pytest.fixture(scope="session")
def lenet_checkpoint(tmp_path_factory):
    """LeNet-5 trained on digits with the default recipe (about 10 s on two cores)."""
    path = tmp_path_factory.mktemp("checkpoints") / "lenet5_digits.pt"
    train("lenet5", out=path, progress=False)
    return path
