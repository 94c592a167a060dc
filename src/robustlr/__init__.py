"""robustlr: federated learning under backdoor attack, and the robust learning rate defense.

Modules (imports go one way, top to bottom of this list never imports upward):

- ``robustlr.aggregation``: aggregation rules over a stacked update matrix, and ``RobustLR``.
- ``robustlr.data``: in-memory datasets (Fashion-MNIST, FEMNIST, CIFAR-10) and partitioners.
- ``robustlr.attacks``: trojan patterns, poisoning, distributed backdoors.
- ``robustlr.models``: the paper's networks.
- ``robustlr.config``: the one typed, validated experiment configuration.
- ``robustlr.client``: local training of agents.
- ``robustlr.simulation``: the round loop.
- ``robustlr.report``: tables and plots.
- ``robustlr.cli``: the ``robustlr`` command.
"""

__version__ = "0.1.0"
