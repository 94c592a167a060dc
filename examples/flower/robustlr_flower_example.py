"""A Flower app that runs a robustlr experiment: FedAvg + RLR under a backdoor attack.

The run config (``pyproject.toml``, ``[tool.flwr.app.config]``) names the robustlr config
(a preset or its JSON) and the data folder; every SuperNode trains the agents the server
assigns it with robustlr's own local training, attacks included.
"""

from robustlr.integrations.flower.apps import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
