"""A Flower ``Grid`` that calls a ClientApp in this process: ``Strategy.start()`` without Ray,
a SuperLink or the network. For tests and quick checks of an app's logic, not for speed."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid


class InProcessGrid(Grid):
    """``num_nodes`` nodes (ids 1..num_nodes) that all run ``client_app`` with ``run_config``.

    A node whose call raises replies with nothing (as a node that fails); ``failed`` counts them."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict) -> None:
        self.client_app = client_app
        self.nodes = list(range(1, num_nodes + 1))
        self.run_config = dict(run_config)
        self._run = None
        self._states: dict[int, RecordDict] = {n: RecordDict() for n in self.nodes}
        self.failed = 0

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages):  # pragma: no cover - send_and_receive does the work here
        raise NotImplementedError("InProcessGrid answers in send_and_receive")

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError("InProcessGrid answers in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, node_config={"partition-id": self.nodes.index(node)},
                              state=self._states[node], run_config=self.run_config)
            try:
                replies.append(self.client_app(msg, context))
            except Exception:  # noqa: BLE001 - a failing node sends no reply, as on a real grid
                self.failed += 1
        return replies
