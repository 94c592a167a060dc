import pytest
import torch


@pytest.fixture
def paper_U() -> torch.Tensor:
    """The issue's example: three agents, three coordinates."""
    return torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
