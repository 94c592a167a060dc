"""robustlr on Flower (``pip install "robustlr[flower]"``): the robust learning rate, sign
aggregation and FoolsGold as strategies of Flower's Message API.

In a ServerApp::

    from flwr.serverapp.strategy import FedAvg
    from robustlr.integrations.flower import RobustLRStrategy, trainable_keys

    strategy = RobustLRStrategy(FedAvg(fraction_train=1.0), threshold=4, flip_keys=trainable_keys(model))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=10)

The strategies and :mod:`.arrays` need torch, numpy and flwr only (not the simulator's extra);
:mod:`.apps` (robustlr's own ServerApp and ClientApp) and :mod:`.simulation` (``--engine flower``)
also need ``robustlr[sim]``, and are not imported here.
"""

from robustlr._optional import require

require("flwr", extra="flower", feature="robustlr.integrations.flower")

from robustlr.integrations.flower.arrays import ArrayLayout, screen_replies, trainable_keys  # noqa: E402
from robustlr.integrations.flower.strategy import (RobustLRStrategy, RuleStrategy, fltrust_strategy, foolsgold_strategy,  # noqa: E402
                                                   sign_aggregation_strategy)

__all__ = ["ArrayLayout", "RobustLRStrategy", "RuleStrategy", "fltrust_strategy", "foolsgold_strategy", "screen_replies",
           "sign_aggregation_strategy", "trainable_keys"]
