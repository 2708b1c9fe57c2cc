"""The root-only on-premises cluster test: `ray up` on three hosts made of network
namespaces on this machine (`python -m tests.cluster.netns_cluster test` from the repository
root). Not part of the installed package."""
from qfleet.common.errors import QfleetError


class ClusterTestError(QfleetError):
    """The cluster test found its hosts, the Ray cluster or a training run not as expected;
    the message names what and where."""
